"""Command-driven physical hosts: deadlines kill the whole command, failures keep their output."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import (
    DomainState,
    HostUnreachable,
    OperationFailed,
    OperationTimedOut,
    SnapshotMissing,
)
from testlab.hypervisor.command import CommandBackend

from .conftest import make_command


def backend_with(**commands: str) -> CommandBackend:
    base = {"power_on": "true", "power_off": "true", "state": "echo running", "revert": "true"}
    backend = open_backend(
        "command", "rack1-host3", "command://rack1-host3", {"commands": {**base, **commands}}
    )
    assert isinstance(backend, CommandBackend)
    return backend


def test_overrun_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    backend = backend_with(power_on=f"sleep 30 & echo $! > {pidfile}; echo started; wait")
    backend.timeouts["power_on"] = 0.5
    started = time.monotonic()
    with pytest.raises(OperationTimedOut, match="started"):
        backend.power_on("host3")
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or " Z " in Path(f"/proc/{child}/stat").read_text()
    assert backend.last_results["power_on"].returncode is None


def test_failure_quotes_the_last_lines_and_is_recorded(caplog: pytest.LogCaptureFixture) -> None:
    script = "for i in $(seq 1 30); do echo line $i; done; echo 'pxe: no lease' >&2; exit 7"
    backend = backend_with(revert=script)
    with (
        caplog.at_level(logging.INFO, logger="testlab.hypervisor.command"),
        pytest.raises(OperationFailed) as info,
    ):
        backend.revert("host3", "debian-12")
    message = str(info.value)
    assert "exit status 7" in message and "pxe: no lease" in message and "line 30" in message
    assert "line 5\n" not in message  # only the tail
    result = backend.last_results["revert"]
    assert result.returncode == 7 and "line 1\n" in result.output
    assert any("pxe: no lease" in r.getMessage() for r in caplog.records)


def test_placeholders_are_shell_quoted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    backend = backend_with(revert=f"printf '%s|%s|%s' {{host}} {{domain}} {{snapshot}} > {out}")
    backend.revert("x; rm -rf /", "clean $(id)")
    assert out.read_text() == "rack1-host3|x; rm -rf /|clean $(id)"


def test_exit_codes_map_to_typed_errors() -> None:
    assert backend_with(state="exit 3").state("h") == DomainState.MISSING
    with pytest.raises(SnapshotMissing):
        backend_with(revert="exit 4").revert("h", "nosuch")
    with pytest.raises(HostUnreachable):
        backend_with(power_on="exit 5").power_on("h")
    with pytest.raises(OperationFailed, match="printed 'banana'"):
        backend_with(state="echo banana").state("h")


def test_power_cycle_and_health(tmp_path: Path) -> None:
    backend = make_command(tmp_path)
    backend.power_cycle()
    assert backend.state("d1") == DomainState.RUNNING
    assert backend.health().free_disk_bytes == 123456789
    assert not backend_with(health="exit 1").health().reachable
    with pytest.raises(OperationFailed, match="no power-cycle command"):
        backend_with().power_cycle()
    assert backend.agent_address("d1") is None


@pytest.mark.parametrize(
    ("commands", "error"),
    [
        ({"power_on": "true"}, "lacks commands"),
        (
            {"power_on": "x", "power_off": "x", "state": "x", "revert": "x", "reboot": "x"},
            "unknown operations",
        ),
        ({"power_on": "x {vm}", "power_off": "x", "state": "x", "revert": "x"}, "unknown placeholders"),
    ],
)
def test_bad_configuration_is_refused(commands: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        open_backend("command", "h", "command://h", {"commands": commands})
