"""Backend options from the lab file: each one is used, a wrong one is refused at once in one line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from testlab.hypervisor import FaultPlan, FaultyBackend, host_driver, open_backend
from testlab.hypervisor.base import OPERATIONS, OperationFailed, OperationTimedOut
from testlab.hypervisor.driver import DEFAULT_TIMEOUTS
from testlab.hypervisor.local import LocalBackend

from .conftest import LIBVIRT_LAB, make_local, shutdown

COMMANDS = {"power_on": "true", "power_off": "true", "state": "echo running", "revert": "true"}


def uri_of(kind: str, tmp_path: Path) -> str:
    if kind == "libvirt":
        pytest.importorskip("libvirt")
        lab = tmp_path / "lab.xml"
        lab.write_bytes(LIBVIRT_LAB.read_bytes())
        return f"test://{lab}"
    return {"local": f"local://{tmp_path / 'vms'}", "command": "command://h"}[kind]


def base_options(kind: str) -> dict[str, object]:
    return {"commands": dict(COMMANDS)} if kind == "command" else {}


@pytest.mark.parametrize("kind", ["local", "libvirt", "command"])
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"spare_copy": True}, "unknown options spare_copy"),
        ({"timeouts": {"revrt": 10}}, "timeouts for unknown operations revrt"),
        ({"timeouts": {"revert": "soon"}}, "option timeouts.revert: expected a duration"),
        ({"timeouts": {"revert": 0}}, "option timeouts.revert must be positive"),
        ({"timeouts": 60}, "timeouts must map an operation to seconds"),
    ],
)
def test_bad_options_are_refused_in_one_line(
    tmp_path: Path, kind: str, options: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error) as info:
        open_backend(kind, "h", uri_of(kind, tmp_path), {**base_options(kind), **options})
    assert "\n" not in str(info.value) and "'h'" in str(info.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"spare_copies": "no"}, "spare_copies must be true or false"),
        ({"boot_timeout": -1}, "boot_timeout: must not be negative"),
        ({"boot_timeout": "fast"}, "boot_timeout: expected a duration"),
        ({"snapshots": ["a"]}, "unknown options snapshots"),
    ],
)
def test_bad_local_options_are_refused(tmp_path: Path, options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        open_backend("local", "h", f"local://{tmp_path}", options)


def test_bad_command_options_are_refused() -> None:
    with pytest.raises(ValueError, match="snapshots must be a list of names"):
        open_backend("command", "h", "command://h", {"commands": COMMANDS, "snapshots": "debian-12"})
    with pytest.raises(ValueError, match="unknown options spare_copies"):
        open_backend("command", "h", "command://h", {"commands": COMMANDS, "spare_copies": False})


def test_timeouts_are_the_driver_deadlines(tmp_path: Path) -> None:
    assert set(DEFAULT_TIMEOUTS) == set(OPERATIONS)
    backend = open_backend("local", "h", f"local://{tmp_path}", {"timeouts": {"revert": "2m", "state": 5}})
    driver = host_driver(backend, max_workers=2)
    assert driver.timeouts["revert"] == 120.0 and driver.timeouts["state"] == 5.0
    assert driver.timeouts["power_on"] == DEFAULT_TIMEOUTS["power_on"]
    # A command host's driver waits for its commands, whose default deadlines are longer.
    command = open_backend("command", "h", "command://h", {"commands": COMMANDS, "timeouts": {"state": 7}})
    deadlines = host_driver(command).timeouts
    assert deadlines["revert"] > 3600 and 7 < deadlines["state"] < 60


def test_a_driver_deadline_from_the_options_is_enforced(tmp_path: Path) -> None:
    inner = open_backend("local", "h", f"local://{tmp_path}", {"timeouts": {"state": 0.3}})
    backend = FaultyBackend(inner, FaultPlan.from_dict([{"op": "state", "action": "hang", "seconds": 5}]))

    async def scenario() -> float:
        async with host_driver(backend) as driver:
            started = time.monotonic()
            with pytest.raises(OperationTimedOut, match="0.3 s deadline"):
                await driver.state("d1")
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


@pytest.mark.parametrize("spare_copies", [True, False])
def test_spare_copies_option(tmp_path: Path, spare_copies: bool) -> None:
    backend = make_local(tmp_path, spare_copies=spare_copies)
    try:
        backend.revert("d1", "clean")
        backend.wait_idle()
        spares = [p.name for p in (backend.root / "d1").iterdir() if p.name.startswith(".spare-")]
        assert spares == ([".spare-clean"] if spare_copies else [])
    finally:
        shutdown(backend)


def test_boot_timeout_option(tmp_path: Path) -> None:
    silent = tmp_path / "silent-agent.py"
    silent.write_text("import time\ntime.sleep(60)\n")
    backend = make_local(tmp_path, agent_script=str(silent), boot_timeout="0.5s")
    assert isinstance(backend, LocalBackend) and backend.boot_timeout == 0.5
    try:
        started = time.monotonic()
        with pytest.raises(OperationFailed, match="no answer within 0.5 s"):
            backend.power_on("d1")
        assert time.monotonic() - started < 10
    finally:
        shutdown(backend)


def test_command_snapshots_and_timeouts_options() -> None:
    backend = open_backend(
        "command",
        "h",
        "command://h",
        {
            "commands": {**COMMANDS, "power_on": "sleep 30"},
            "snapshots": ["win11", "debian-12"],
            "timeouts": {"power_on": 0.3},
        },
    )
    assert backend.list_snapshots("h") == ["debian-12", "win11"]
    started = time.monotonic()
    with pytest.raises(OperationTimedOut):
        backend.power_on("h")
    assert time.monotonic() - started < 5


def test_an_unset_option_changes_nothing(tmp_path: Path) -> None:
    backend = open_backend("local", "h", f"local://{tmp_path}")
    assert host_driver(backend).timeouts == dict(DEFAULT_TIMEOUTS)
