"""The engine: one asyncio process that plans with the pure scheduler and drives the lab.

Loop: wait for a change (the event history grew, an operation ended, a tick passed) -> read a
snapshot -> plan -> record the actions -> run them as background coroutines. Every database call runs
on one dedicated thread (never on the event loop); hypervisor calls run in each host's thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from testlab.config import Settings
from testlab.db.session import check_schema, session_scope
from testlab.engine import lease
from testlab.engine.connections import Connections
from testlab.engine.operations import Operations
from testlab.engine.options import EngineOptions
from testlab.engine.reconcile import reconcile
from testlab.engine.store import Store
from testlab.engine.work import PowerOffWork, RevertWork, TaskWork
from testlab.scheduler import plan

log = logging.getLogger("testlab.engine")


class Engine:
    def __init__(self, settings: Settings, options: EngineOptions | None = None) -> None:
        self.settings = settings
        self.options = options or EngineOptions.from_env()
        self.store = Store(settings, self.options)
        self.connections = Connections(self.options)
        self._db_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="testlab-db"
        )
        self.operations = Operations(self.store, self.connections, self.db)
        self.holder = lease.holder_id()
        self.inflight: dict[str, asyncio.Task] = {}  # VM name -> its operation
        self.killing: set[int] = set()  # task ids being killed
        self.blocked: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_event = -1
        self.rounds = 0

    async def db(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(function, *args, **kwargs))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ life cycle

    async def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Run until stopped (SIGTERM/SIGINT, stop()) or until `until()` is true after a round."""
        await self.db(check_schema, self.settings.database_url)
        await self.db(self._acquire_lease)
        background: list[asyncio.Task] = []
        try:
            self.connections.configure(await self.db(self.store.hosts))
            for work in await reconcile(self.store, self.connections, self.db):
                self._spawn(work.vm.name, self.operations.run_task(work, attach=True))
            background = [asyncio.create_task(self._watch_events()), asyncio.create_task(self._renew_lease())]
            while not self._stop.is_set():
                await self._round()
                if until is not None and until():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.options.tick)
                self._wake.clear()
        finally:
            for task in background:
                task.cancel()
            # Operations in flight are abandoned, not undone: the next engine re-attaches to them.
            for task in list(self.inflight.values()):
                task.cancel()
            await asyncio.gather(*background, *self.inflight.values(), return_exceptions=True)
            await self.connections.aclose()
            with contextlib.suppress(Exception):
                await self.db(self._release_lease)
            self._db_thread.shutdown(wait=True)

    def _acquire_lease(self) -> None:
        with session_scope(self.settings.database_url) as session:
            lease.acquire(session, self.holder, self.options.lease_ttl)

    def _release_lease(self) -> None:
        with session_scope(self.settings.database_url) as session:
            lease.release(session, self.holder)

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(self.options.lease_ttl / 3)

            def renew() -> bool:
                with session_scope(self.settings.database_url) as session:
                    return lease.renew(session, self.holder, self.options.lease_ttl)

            if not await self.db(renew):
                log.error("another engine took over the lease: stopping")
                self.stop()
                return

    async def _watch_events(self) -> None:
        """The event history is the change feed: any new event (a job submitted, a VM set by an
        administrator, an operation's outcome) triggers a new planning round."""
        while True:
            try:
                last = await self.db(self.store.last_event_id)
            except Exception:  # noqa: BLE001 - a busy database: the next poll or tick will do
                log.warning("could not poll the event history", exc_info=True)
                last = self._last_event
            if last != self._last_event:
                self._last_event = last
                self._wake.set()
            await asyncio.sleep(self.options.poll_interval)

    # ------------------------------------------------------------------ one round

    async def _round(self) -> None:
        self.rounds += 1
        self.connections.configure(await self.db(self.store.hosts))
        view = await self.db(self.store.load, frozenset(self.inflight), time.time())
        decided = plan(view.snapshot)
        if dict(decided.blocked) != self.blocked:
            self.blocked = dict(decided.blocked)
            for vm, reason in self.blocked.items():
                log.info("tasks for %s are blocked: %s", vm, reason)
        if decided.actions:
            for work in await self.db(self.store.begin, decided):
                self._spawn(work.vm.name, self._operation(work))
        for kill in view.to_kill:
            if kill.task_id not in self.killing:
                self.killing.add(kill.task_id)
                asyncio.create_task(self._kill(kill))
        for check in view.to_monitor:
            self._spawn(check.vm.name, self.operations.monitor(check))
        for vm in view.expired:
            if vm.name not in self.inflight:
                await self.db(self.store.operation_expired, vm.id)

    async def _kill(self, kill) -> None:
        try:
            await self.operations.kill(kill)
            await asyncio.sleep(2)  # the follower records the outcome; re-kill only if it did not
        finally:
            self.killing.discard(kill.task_id)

    def _operation(self, work: RevertWork | PowerOffWork | TaskWork):
        if isinstance(work, RevertWork):
            return self._guarded(work, self.operations.revert(work))
        if isinstance(work, PowerOffWork):
            return self._guarded(work, self.operations.power_off(work))
        return self._guarded(work, self.operations.run_task(work))

    async def _guarded(self, work, coroutine) -> None:
        """An operation that dies of an unexpected error must not leave its VM busy for ever: the
        error is recorded like any infrastructure error (the task requeued, the VM's count raised)."""
        try:
            await coroutine
        except Exception as error:  # noqa: BLE001 - a bug or an unmapped error; recorded, not hidden
            log.exception("operation on %s failed unexpectedly", work.vm.name)
            reason = f"engine error: {type(error).__name__}: {error}"
            if isinstance(work, TaskWork):
                await self.db(self.store.task_requeue, work.task_id, reason)
            else:
                await self.db(self.store.vm_error, work.vm.id, reason)

    def _spawn(self, vm_name: str, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self.inflight[vm_name] = task

        def done(finished: asyncio.Task) -> None:
            if self.inflight.get(vm_name) is finished:
                del self.inflight[vm_name]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("operation on %s failed", vm_name, exc_info=finished.exception())
            self._wake.set()

        task.add_done_callback(done)


def run_engine(settings: Settings, options: EngineOptions | None = None) -> None:
    """`testlab engine`: run in the foreground until SIGTERM or SIGINT."""

    async def main() -> None:
        engine = Engine(settings, options)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, engine.stop)
        await engine.run()

    asyncio.run(main())
