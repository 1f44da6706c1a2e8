"""Backends holding the same lab: d1 and d2 (snapshot "clean"), shared ("clean", "clean-fr"), all off."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import Backend
from testlab.hypervisor.local import AGENT_SCRIPT

DATA = Path(__file__).resolve().parent.parent / "data"
LIBVIRT_LAB = DATA / "libvirt-lab.xml"
FAKEHOST = DATA / "command-backend" / "fakehost.py"

LAB = {"d1": ["clean"], "d2": ["clean"], "shared": ["clean", "clean-fr"]}
BACKENDS = ["libvirt", "local", "local-process", "command"]


def need_agent() -> None:
    if not AGENT_SCRIPT.is_file():
        pytest.skip("the agent server does not exist yet")


def make_libvirt(tmp_path: Path) -> Backend:
    pytest.importorskip("libvirt")
    lab = tmp_path / "libvirt-lab.xml"  # a file per test: the test driver keeps state per URI
    shutil.copy(LIBVIRT_LAB, lab)
    return open_backend("libvirt", "vmhost", f"test://{lab}")


def make_local(tmp_path: Path, **options: object) -> Backend:
    need_agent()
    backend = open_backend("local", "localhost", f"local://{tmp_path / 'vms'}", options)
    for domain, snapshots in LAB.items():
        for snapshot in snapshots:
            backend.ensure_domain(domain, snapshot)
    return backend


def make_local_process(tmp_path: Path) -> Backend:
    """The engine's local backend: the same domains, served by a local hypervisor process."""
    make_local(tmp_path).close()
    return open_backend("local", "localhost", f"local://{tmp_path / 'vms'}", own_process=True)


def command_options(state_dir: Path) -> dict[str, object]:
    base = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKEHOST))} {shlex.quote(str(state_dir))}"
    ops = ["state", "power_on", "power_off", "list_snapshots", "health", "power_cycle"]
    commands = {op: f"{base} {op} {{domain}}" for op in ops}
    commands["health"] = f"{base} health"
    commands["power_cycle"] = f"{base} power_cycle"
    commands["revert"] = f"{base} revert {{domain}} {{snapshot}}"
    commands["create_snapshot"] = f"{base} create_snapshot {{domain}} {{snapshot}}"
    return {"commands": commands}


def make_command(tmp_path: Path) -> Backend:
    state_dir = tmp_path / "rack"
    state_dir.mkdir()
    for domain, snapshots in LAB.items():
        (state_dir / f"{domain}.json").write_text(json.dumps({"state": "off", "profiles": snapshots}))
    return open_backend("command", "rack1", "command://rack1", command_options(state_dir))


MAKERS = {
    "libvirt": make_libvirt,
    "local": make_local,
    "local-process": make_local_process,
    "command": make_command,
}


def shutdown(backend: Backend) -> None:
    """Leave no agent process behind."""
    for domain in LAB:
        with contextlib.suppress(Exception):  # best effort in teardown
            backend.power_off(domain)
    backend.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = MAKERS[request.param](tmp_path)
    yield made
    shutdown(made)


@pytest.fixture
def local_backend(tmp_path: Path) -> Iterator[Backend]:
    made = make_local(tmp_path)
    yield made
    shutdown(made)


@pytest.fixture
def libvirt_backend(tmp_path: Path) -> Iterator[Backend]:
    made = make_libvirt(tmp_path)
    yield made
    shutdown(made)
