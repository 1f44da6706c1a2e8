"""One contract, every backend: the engine must not be able to tell them apart."""

from __future__ import annotations

import asyncio

import pytest

from testlab.hypervisor import HostDriver
from testlab.hypervisor.base import (
    Backend,
    DomainMissing,
    DomainState,
    HostHealth,
    SnapshotMissing,
)


def test_state_of_existing_and_missing_domains(backend: Backend) -> None:
    assert backend.state("d1") == DomainState.OFF
    assert backend.state("shared") == DomainState.OFF
    assert backend.state("nosuch") == DomainState.MISSING


def test_power_on_and_off_are_idempotent(backend: Backend) -> None:
    backend.power_on("d1")
    assert backend.state("d1") == DomainState.RUNNING
    backend.power_on("d1")
    assert backend.state("d1") == DomainState.RUNNING
    assert backend.state("d2") == DomainState.OFF
    backend.power_off("d1")
    assert backend.state("d1") == DomainState.OFF
    backend.power_off("d1")
    assert backend.state("d1") == DomainState.OFF


def test_power_operations_on_a_missing_domain_raise(backend: Backend) -> None:
    with pytest.raises(DomainMissing):
        backend.power_on("nosuch")
    with pytest.raises(DomainMissing):
        backend.power_off("nosuch")


def test_revert_leaves_the_domain_running(backend: Backend) -> None:
    backend.revert("d1", "clean")
    assert backend.state("d1") == DomainState.RUNNING
    backend.revert("d1", "clean")  # from running too
    assert backend.state("d1") == DomainState.RUNNING
    backend.revert("d2", "clean")  # d2's snapshot was taken powered off in the libvirt lab
    assert backend.state("d2") == DomainState.RUNNING


def test_shared_domain_reverts_to_either_snapshot(backend: Backend) -> None:
    for snapshot in ("clean-fr", "clean", "clean-fr"):
        backend.revert("shared", snapshot)
        assert backend.state("shared") == DomainState.RUNNING


def test_revert_to_missing_snapshot_or_domain_raises(backend: Backend) -> None:
    with pytest.raises(SnapshotMissing):
        backend.revert("d1", "nosuch")
    assert backend.state("d1") == DomainState.OFF  # nothing changed
    with pytest.raises(DomainMissing):
        backend.revert("nosuch", "clean")


def test_list_and_create_snapshots(backend: Backend) -> None:
    assert backend.list_snapshots("shared") == ["clean", "clean-fr"]
    assert backend.list_snapshots("d1") == ["clean"]
    backend.create_snapshot("d1", "extra")
    assert sorted(backend.list_snapshots("d1")) == ["clean", "extra"]
    backend.revert("d1", "extra")
    assert backend.state("d1") == DomainState.RUNNING
    with pytest.raises(DomainMissing):
        backend.list_snapshots("nosuch")


def test_ensure_domain_accepts_an_existing_domain(backend: Backend) -> None:
    backend.ensure_domain("shared", "clean-fr")
    assert backend.list_snapshots("shared") == ["clean", "clean-fr"]


def test_health_reports_a_reachable_host(backend: Backend) -> None:
    health = backend.health()
    assert isinstance(health, HostHealth)
    assert health.reachable
    assert health.free_disk_bytes is None or health.free_disk_bytes > 0


def test_driver_runs_the_contract_asynchronously(backend: Backend) -> None:
    async def scenario() -> None:
        async with HostDriver(backend, max_workers=2) as driver:
            await asyncio.gather(driver.revert("d1", "clean"), driver.revert("shared", "clean-fr"))
            states = await asyncio.gather(driver.state("d1"), driver.state("shared"), driver.state("d2"))
            assert states == [DomainState.RUNNING, DomainState.RUNNING, DomainState.OFF]
            assert await driver.list_snapshots("shared") == ["clean", "clean-fr"]
            assert (await driver.health()).reachable
            with pytest.raises(SnapshotMissing) as info:
                await driver.revert("d1", "nosuch")
            assert info.value.host == backend.host
            await driver.power_off("d1")
            assert await driver.state("d1") == DomainState.OFF

    asyncio.run(scenario())
