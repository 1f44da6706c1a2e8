"""The async driver: deadlines that never block the event loop, a pool that stays bounded."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path

import pytest

from testlab.hypervisor import FaultPlan, FaultyBackend, HostDriver
from testlab.hypervisor.base import Backend, DomainState, OperationFailed, OperationTimedOut

from .conftest import make_libvirt


def hanging(backend: Backend, seconds: float) -> FaultyBackend:
    return FaultyBackend(backend, FaultPlan.from_dict([{"op": "*", "action": "hang", "seconds": seconds}]))


def test_overrun_raises_timed_out_while_the_loop_keeps_ticking(libvirt_backend: Backend) -> None:
    async def scenario() -> tuple[int, float]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        driver = HostDriver(hanging(libvirt_backend, 1.5), max_workers=2)
        task = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(OperationTimedOut) as info:
            await driver.revert("d1", "clean", timeout=0.3)
        elapsed = time.monotonic() - started
        assert info.value.host == "vmhost" and info.value.domain == "d1"
        stop.set()
        await task
        await driver.aclose()
        return ticks, elapsed

    # A full collection of a long test session's heap can hold the loop for a second or more (it once
    # measured 1.8 s here): the deadline is the driver's to keep, the collector's pauses are not.
    gc.collect()
    gc.disable()
    try:
        ticks, elapsed = asyncio.run(scenario())
    finally:
        gc.enable()
    assert elapsed < 1.0
    assert ticks >= 10


def test_pool_stays_bounded_under_hung_calls(libvirt_backend: Backend) -> None:
    async def scenario() -> None:
        driver = HostDriver(hanging(libvirt_backend, 1.0), max_workers=2)
        before = threading.active_count()
        results = await asyncio.gather(
            *(driver.state("d1", timeout=0.2) for _ in range(8)), return_exceptions=True
        )
        assert all(isinstance(r, OperationTimedOut) for r in results)
        assert threading.active_count() - before <= 2
        await driver.aclose()

    asyncio.run(scenario())


def test_default_deadlines_and_overrides() -> None:
    driver = HostDriver(_Unreachable(), timeouts={"state": 5.0})  # type: ignore[arg-type]
    assert driver.timeouts["state"] == 5.0
    assert driver.timeouts["revert"] == 360.0
    with pytest.raises(ValueError):
        HostDriver(_Unreachable(), max_workers=0)  # type: ignore[arg-type]


class _Unreachable:
    host = "nowhere"


def test_stray_exceptions_become_operation_failed(tmp_path: Path) -> None:
    backend = make_libvirt(tmp_path)

    async def scenario() -> None:
        async with HostDriver(backend) as driver:
            with pytest.raises(OperationFailed):
                await driver.state(None)  # type: ignore[arg-type]  # libvirt raises TypeError
            assert await driver.state("d1") == DomainState.OFF

    asyncio.run(scenario())
    backend.close()


def test_closed_driver_refuses_calls(libvirt_backend: Backend) -> None:
    async def scenario() -> None:
        driver = HostDriver(libvirt_backend)
        await driver.aclose()
        with pytest.raises(OperationFailed, match="closed"):
            await driver.state("d1")

    asyncio.run(scenario())


def test_a_revert_that_locates_gives_the_new_boots_agent(local_backend: Backend) -> None:
    """One trip for the revert and the new agent's address: the address of the boot it started."""

    async def scenario() -> None:
        driver = HostDriver(local_backend, max_workers=2)
        await driver.power_on("d1")
        address = await driver.revert_and_locate("d1", "clean")
        assert address is not None and address == await driver.agent_address("d1")
        await driver.aclose()

    asyncio.run(scenario())


def test_a_revert_that_locates_reports_no_address_where_the_backend_knows_none(
    libvirt_backend: Backend,
) -> None:
    async def scenario() -> None:
        driver = HostDriver(libvirt_backend, max_workers=2)
        assert await driver.revert_and_locate("d1", "clean") is None
        assert await driver.state("d1") == DomainState.RUNNING
        await driver.aclose()

    asyncio.run(scenario())
