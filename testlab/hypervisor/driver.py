"""Async facade over one host's blocking Backend.

The engine is a single asyncio process driving many hosts; a libvirt call stuck on a dead SSH link
must neither freeze the event loop nor let one host eat every thread. Each host therefore gets its
own bounded pool of daemon threads (a hung call never delays the engine's exit), and every call has a
deadline measured from the moment it is requested (time spent queued behind hung calls counts).

Calls on one domain run one after the other, and a call whose caller gave up at its deadline still
counts as running until its thread returns: a power off never overtakes a timed-out revert that is
still going, so a domain is not left running by a revert finishing after the database recorded it off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from testlab.hypervisor.base import (
    AgentAddress,
    Backend,
    DomainState,
    HostHealth,
    HypervisorError,
    OperationFailed,
    OperationTimedOut,
)
from testlab.threads import DaemonThreadPool

log = logging.getLogger("testlab.hypervisor.driver")

T = TypeVar("T")

#: Seconds; a revert copies or rewrites a whole disk, a state query is one round trip.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "revert": 360.0,
    "state": 60.0,
    "power_on": 120.0,
    "power_off": 60.0,
    "list_snapshots": 60.0,
    "create_snapshot": 600.0,
    "health": 60.0,
    "power_cycle": 600.0,
    "agent_address": 60.0,
    "ensure_domain": 600.0,
}


class HostDriver:
    """Runs one Backend's calls in a bounded thread pool, each under a deadline.

    A call that overruns raises OperationTimedOut; its thread may keep running (threads cannot be
    killed) but the pool never grows beyond `max_workers`, so a hung host only slows itself down, and
    later calls on the same domain wait for it (within their own deadline).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_workers: int = 4,
        timeouts: Mapping[str, float] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self.backend = backend
        self.max_workers = max_workers
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self._pool = DaemonThreadPool(max_workers, f"host-{backend.host}")
        self._closed = False
        self._domain_locks: dict[str, asyncio.Lock] = {}
        # The last call on each domain, which may still run after its caller gave up: (op, future).
        self._domain_calls: dict[str, tuple[str, concurrent.futures.Future]] = {}

    @property
    def host(self) -> str:
        return self.backend.host

    async def _call(
        self, op: str, timeout: float | None, fn: Callable[..., T], *args: Any, domain: str | None = None
    ) -> T:
        if self._closed:
            raise OperationFailed(f"driver for host {self.host!r} is closed", host=self.host, domain=domain)
        limit = self.timeouts[op] if timeout is None else timeout
        what = f"{op} of {domain!r}" if domain else op
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                if domain is None:
                    return await self._run(fn, args, domain, op)
                lock = self._domain_locks.setdefault(domain, asyncio.Lock())
                async with lock:
                    await self._after_earlier_call(domain)
                    return await self._run(fn, args, domain, op)
        except TimeoutError:
            log.warning("host %s: %s overran its %.1f s deadline", self.host, what, limit)
            earlier = self._domain_calls.get(domain) if domain else None
            still = (
                f" (an earlier {earlier[0]} of {domain!r} is still running)"
                if earlier is not None and earlier[0] != op and not earlier[1].done()
                else ""
            )
            raise OperationTimedOut(
                f"{what} on host {self.host!r} overran its {limit:g} s deadline{still}",
                host=self.host,
                domain=domain,
            ) from None
        except HypervisorError as exc:
            if exc.host is None:
                exc.host = self.host
            if exc.domain is None:
                exc.domain = domain
            raise
        finally:
            log.debug("host %s: %s took %.3f s", self.host, what, time.monotonic() - started)

    async def _after_earlier_call(self, domain: str) -> None:
        """Wait for a call on the domain whose caller gave up but whose thread still runs."""
        earlier = self._domain_calls.get(domain)
        if earlier is not None and not earlier[1].done():
            await asyncio.wait([asyncio.wrap_future(earlier[1])])

    async def _run(self, fn: Callable[..., T], args: tuple, domain: str | None, op: str) -> T:
        future = self._pool.submit(_guarded, fn, *args)
        if domain is not None:
            self._domain_calls[domain] = (op, future)
        return await asyncio.wrap_future(future)

    async def state(self, domain: str, *, timeout: float | None = None) -> DomainState:
        return await self._call("state", timeout, self.backend.state, domain, domain=domain)

    async def power_on(self, domain: str, *, timeout: float | None = None) -> None:
        await self._call("power_on", timeout, self.backend.power_on, domain, domain=domain)

    async def power_off(self, domain: str, *, timeout: float | None = None) -> None:
        await self._call("power_off", timeout, self.backend.power_off, domain, domain=domain)

    async def revert(self, domain: str, snapshot: str, *, timeout: float | None = None) -> None:
        await self._call("revert", timeout, self.backend.revert, domain, snapshot, domain=domain)

    async def revert_and_locate(
        self, domain: str, snapshot: str, *, timeout: float | None = None
    ) -> AgentAddress | None:
        """Revert, then ask where the new boot's agent listens (`agent_address`), in one trip to the
        host's thread: the engine asks after every revert, and each trip costs its loop a wake-up."""
        return await self._call(
            "revert", timeout, self.backend.revert_and_locate, domain, snapshot, domain=domain
        )

    async def list_snapshots(self, domain: str, *, timeout: float | None = None) -> list[str]:
        return await self._call("list_snapshots", timeout, self.backend.list_snapshots, domain, domain=domain)

    async def create_snapshot(self, domain: str, name: str, *, timeout: float | None = None) -> None:
        await self._call(
            "create_snapshot", timeout, self.backend.create_snapshot, domain, name, domain=domain
        )

    async def health(self, *, timeout: float | None = None) -> HostHealth:
        return await self._call("health", timeout, self.backend.health)

    async def power_cycle(self, *, timeout: float | None = None) -> None:
        await self._call("power_cycle", timeout, self.backend.power_cycle)

    async def agent_address(self, domain: str, *, timeout: float | None = None) -> AgentAddress | None:
        return await self._call("agent_address", timeout, self.backend.agent_address, domain, domain=domain)

    async def ensure_domain(self, domain: str, snapshot: str, *, timeout: float | None = None) -> None:
        await self._call(
            "ensure_domain", timeout, self.backend.ensure_domain, domain, snapshot, domain=domain
        )

    async def call(
        self, op: str, fn: Callable[..., T], *args: Any, timeout: float, domain: str | None = None
    ) -> T:
        """Any other blocking call of the backend (provisioning defines domains, reads their XML) on
        the host's pool, under the same deadline rules as the operations above."""
        return await self._call(op, timeout, fn, *args, domain=domain)

    async def aclose(self, *, timeout: float = 10.0) -> None:
        """Stop accepting calls and release the backend without waiting for hung threads."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        closer = DaemonThreadPool(1, f"close-{self.host}")
        try:
            await asyncio.wait_for(asyncio.wrap_future(closer.submit(self.backend.close)), timeout)
        except TimeoutError:
            log.warning("host %s: closing the backend overran %.1f s", self.host, timeout)
        finally:
            closer.shutdown(wait=False)

    async def __aenter__(self) -> HostDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def host_driver(backend: Backend, *, max_workers: int = 4) -> HostDriver:
    """The driver of a host, with the per-operation deadlines of its lab definition: the `timeouts`
    option, and for operations done by a site command a deadline just past the command's own (a
    30-minute reinstall must not be abandoned at the default 6 minutes). The backend checked the
    options when it was built, so this cannot fail on them."""
    return HostDriver(backend, max_workers=max_workers, timeouts=backend.deadlines())


def _guarded(fn: Callable[..., T], *args: Any) -> T:
    """Turn stray exceptions into OperationFailed so the engine only has to know the typed errors."""
    try:
        return fn(*args)
    except HypervisorError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend bug is an infrastructure error
        raise OperationFailed(f"{type(exc).__name__}: {exc}") from exc
