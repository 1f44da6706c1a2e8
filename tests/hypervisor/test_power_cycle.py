"""A host's `power_cycle` command runs whatever its backend: the way back from a frozen hypervisor."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path

import pytest

from testlab.hypervisor import HostConfig, host_driver, open_backend, open_host
from testlab.hypervisor.base import Backend, DomainState, OperationFailed, OperationTimedOut

from .conftest import LIBVIRT_LAB, make_local, shutdown
from .test_local import agent_info


def libvirt_with(tmp_path: Path, **options: object) -> Backend:
    pytest.importorskip("libvirt")
    lab = tmp_path / "libvirt-lab.xml"
    lab.write_bytes(LIBVIRT_LAB.read_bytes())
    return open_backend("libvirt", "vmhost 1", f"test://{lab}", options)


def marking(mark: Path) -> str:
    """A power-cycle command that leaves a mark file naming the host it was given."""
    return f"echo cycled {{host}} > {shlex.quote(str(mark))}"


def test_libvirt_host_runs_its_power_cycle_command(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    backend = libvirt_with(tmp_path, commands={"power_cycle": marking(mark)})
    try:
        backend.power_cycle()
        assert mark.read_text() == "cycled vmhost 1\n"  # {host} substituted, quoted
        assert backend.runner.last_results["power_cycle"].returncode == 0
    finally:
        backend.close()


def test_libvirt_host_without_the_command_says_so(tmp_path: Path) -> None:
    backend = libvirt_with(tmp_path)
    try:
        with pytest.raises(OperationFailed, match="no power-cycle command is configured"):
            backend.power_cycle()
    finally:
        backend.close()


def test_local_host_runs_its_command_instead_of_the_built_in_cycle(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    backend = make_local(tmp_path, commands={"power_cycle": marking(mark)})
    try:
        backend.power_on("d1")
        before = agent_info(backend, "d1")["boot_id"]
        backend.power_cycle()
        assert mark.read_text() == "cycled localhost\n"
        assert agent_info(backend, "d1")["boot_id"] == before  # the built-in cycle did not run
    finally:
        shutdown(backend)


def test_the_command_comes_from_the_lab_definition(tmp_path: Path) -> None:
    """The engine and the CLI build backends through open_host: the host's `commands` reach them."""
    mark = tmp_path / "mark"
    config = HostConfig(
        name="vmhost",
        backend="local",
        uri=f"local://{tmp_path / 'vms'}",
        commands={"power_cycle": marking(mark)},
    )
    open_host(config).power_cycle()
    assert mark.read_text() == "cycled vmhost\n"


def test_a_failing_command_is_reported_with_its_output(tmp_path: Path) -> None:
    backend = libvirt_with(tmp_path, commands={"power_cycle": "echo 'bmc: no route to host'; exit 7"})
    try:
        with pytest.raises(OperationFailed, match="exit status 7: bmc: no route to host"):
            backend.power_cycle()
    finally:
        backend.close()


@pytest.mark.parametrize("kind", ["libvirt", "local"])
def test_a_hanging_command_is_killed_whole_at_its_deadline(tmp_path: Path, kind: str) -> None:
    pidfile = tmp_path / "pid"
    commands = {"power_cycle": f"sleep 60 & echo $! > {shlex.quote(str(pidfile))}; echo asked; wait"}
    options: dict[str, object] = {"commands": commands, "timeouts": {"power_cycle": 0.5}}
    backend = (
        libvirt_with(tmp_path, **options)
        if kind == "libvirt"
        else open_backend("local", "h", f"local://{tmp_path / 'vms'}", options)
    )
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimedOut, match="overran 0.5 s; output ends: asked"):
            backend.power_cycle()
        assert time.monotonic() - started < 5
        child = int(pidfile.read_text())
        time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}") or " Z " in Path(f"/proc/{child}/stat").read_text()
    finally:
        backend.close()


def test_the_driver_waits_for_the_command_and_reports_its_end(tmp_path: Path) -> None:
    """Through the host's driver the command's own deadline acts first and its output is kept."""
    backend = libvirt_with(
        tmp_path, commands={"power_cycle": "echo slow; sleep 30"}, timeouts={"power_cycle": 0.5}
    )

    async def scenario() -> None:
        async with host_driver(backend) as driver:
            assert driver.timeouts["power_cycle"] > 0.5
            with pytest.raises(OperationTimedOut, match="output ends: slow"):
                await driver.power_cycle()

    try:
        asyncio.run(scenario())
        assert backend.state("d1") == DomainState.OFF
    finally:
        backend.close()


@pytest.mark.parametrize("kind", ["libvirt", "local"])
def test_commands_for_other_operations_are_refused(tmp_path: Path, kind: str) -> None:
    """Only `command` hosts run power on/off, state or revert commands; elsewhere they would be ignored."""
    uri = f"test://{LIBVIRT_LAB}" if kind == "libvirt" else f"local://{tmp_path}"
    if kind == "libvirt":
        pytest.importorskip("libvirt")
    with pytest.raises(ValueError, match=r"unknown operations health \(it runs commands for: power_cycle\)"):
        open_backend(kind, "h", uri, {"commands": {"health": "true", "power_cycle": "true"}})
