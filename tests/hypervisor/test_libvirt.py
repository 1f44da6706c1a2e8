"""libvirt specifics: one shared connection per URI, transparent reconnection, error mapping."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

from testlab.hypervisor import libvirt as lv_backend  # noqa: E402
from testlab.hypervisor import open_backend  # noqa: E402
from testlab.hypervisor.base import Backend, DomainMissing, DomainState, HostUnreachable  # noqa: E402

from .conftest import LIBVIRT_LAB  # noqa: E402


def test_instances_of_one_uri_share_the_connection(libvirt_backend: Backend) -> None:
    other = open_backend("libvirt", "vmhost-alias", libvirt_backend.uri)
    libvirt_backend.power_on("d1")
    assert other.state("d1") == DomainState.RUNNING  # the test driver keeps state per connection
    other.close()
    assert libvirt_backend.state("d1") == DomainState.RUNNING  # closing one user keeps it open


def test_reconnects_after_the_connection_is_closed_behind_its_back(libvirt_backend: Backend) -> None:
    assert libvirt_backend.state("d1") == DomainState.OFF
    dead = lv_backend.connection(libvirt_backend.uri)
    dead.close()
    assert libvirt_backend.state("d1") == DomainState.OFF
    assert libvirt_backend.list_snapshots("shared") == ["clean", "clean-fr"]
    assert lv_backend.connection(libvirt_backend.uri) is not dead


def test_unreachable_host(tmp_path: Path) -> None:
    backend = open_backend("libvirt", "gone", f"test://{tmp_path}/missing.xml")
    with pytest.raises(HostUnreachable):
        backend.state("d1")
    health = backend.health()
    assert not health.reachable and "missing.xml" in health.detail
    backend.close()


def test_missing_domain_maps_to_domain_missing(libvirt_backend: Backend) -> None:
    with pytest.raises(DomainMissing) as info:
        libvirt_backend.list_snapshots("nosuch")
    assert info.value.domain == "nosuch" and info.value.host == "vmhost"


def test_health_reports_free_disk_of_the_default_pool(tmp_path: Path) -> None:
    lab = tmp_path / "lab.xml"
    shutil.copy(LIBVIRT_LAB, lab)
    backend = open_backend("libvirt", "vmhost", f"test://{lab}")
    health = backend.health()
    assert health.reachable
    assert health.free_disk_bytes is None or health.free_disk_bytes >= 0
    backend.close()


def test_bad_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="libvirt URI"):
        open_backend("libvirt", "h", "qemu-system")
