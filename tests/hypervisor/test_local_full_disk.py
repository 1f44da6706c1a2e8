"""A task that fills its disk cannot break its VM: the revert throws the full disk away first."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import DomainState
from testlab.hypervisor.local import LocalBackend

from .conftest import need_agent, shutdown
from .test_local import agent_info, manifest, populate

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB filesystem of its own, so filling it does not fill the machine."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mountpoint)], check=True, timeout=30
    )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], timeout=30).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=True, timeout=30)
            raise AssertionError(f"{mountpoint} was still in use after the test")


def fill(path: Path) -> None:
    """Write into `path` until not even one more byte fits."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    f.write(block)
    with pytest.raises(OSError) as info:
        (path.parent / "one-more-byte").write_bytes(b"x")
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("spare_copies", [True, False])
def test_revert_of_a_full_disk_succeeds(small_fs: Path, spare_copies: bool) -> None:
    need_agent()
    backend = open_backend(
        "local", "localhost", f"local://{small_fs / 'vms'}", {"spare_copies": spare_copies}
    )
    assert isinstance(backend, LocalBackend)
    try:
        backend.ensure_domain("d1", "empty")
        disk = backend.root / "d1" / "disk"
        populate(disk)
        backend.create_snapshot("d1", "base")
        expected = manifest(disk)
        backend.revert("d1", "base")
        backend.wait_idle()  # the spare copy, when enabled, is in place: it takes room too
        first = agent_info(backend, "d1")["boot_id"]

        fill(disk / "fill")
        backend.revert("d1", "base")

        assert backend.state("d1") == DomainState.RUNNING
        assert agent_info(backend, "d1")["boot_id"] != first
        assert manifest(disk) == expected
        backend.wait_idle()
        (disk / "room-again").write_bytes(b"x" * (1 << 20))  # the full disk's space is back
        backend.revert("d1", "base")
        assert manifest(disk) == expected
    finally:
        shutdown(backend)


def test_power_off_of_a_full_disk_succeeds(small_fs: Path) -> None:
    need_agent()
    backend = open_backend("local", "localhost", f"local://{small_fs / 'vms'}")
    try:
        backend.ensure_domain("d1", "clean")
        backend.power_on("d1")
        fill(backend.root / "d1" / "disk" / "fill")
        backend.power_off("d1")
        assert backend.state("d1") == DomainState.OFF
        backend.revert("d1", "clean")
        assert backend.state("d1") == DomainState.RUNNING
    finally:
        shutdown(backend)
