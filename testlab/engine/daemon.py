"""The engine: one asyncio process that plans with the pure scheduler and drives the lab.

Loop: wait for a change (the event history grew, an operation ended, a tick passed) -> read a
snapshot, plan and record the actions (one trip to the database thread, and one transaction where
that holds no other writer up: testlab/engine/planning.py) -> run them as background coroutines.
Database calls and planning run on the engine's database thread, hypervisor calls in each host's
thread pool: nothing blocks the event loop.

What stops it: SIGTERM/SIGINT, a lost lease (another engine took over: it changes nothing more and
exits 1) or a schema it does not know. What does not: a database outage (it pauses, leaves the
commands running on their agents, waits for the database and then re-reads everything as at a
restart) and a failed planning round (one line in the log, a back-off, and the next round).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from testlab.config import Settings
from testlab.db import wakeup
from testlab.db.models import utcnow
from testlab.db.session import SchemaOutOfDate, check_schema
from testlab.engine import reading
from testlab.engine.connections import Connections
from testlab.engine.database import EngineDatabase, describe_outage, is_database_outage
from testlab.engine.disk import EngineDisk
from testlab.engine.dispatch import record_notice
from testlab.engine.lease import LeaseKeeper, LeaseLost
from testlab.engine.notifier import Notifier
from testlab.engine.operations import Operations
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from testlab.engine.planning import RoundInputs, run_round
from testlab.engine.reconcile import reconcile
from testlab.engine.reuse import LastViews
from testlab.engine.work import HostCheck, KillWork, MonitorWork, PowerOffWork, RevertWork, TaskWork, View
from testlab.metrics import OPERATION_SECONDS, ROUND_SECONDS
from testlab.scheduler.rounds import Carried
from testlab.services.jobs import recover_staged_jobs
from testlab.threads import name_os_thread

log = logging.getLogger("testlab.engine")

SHUTDOWN_GRACE = 5.0  # seconds a stopping engine gives its connections to close
FIRST_CHECKS_WAIT = 5.0  # seconds a starting engine waits for its hosts' first health checks
IO_THREADS = 8  # threads for the engine's file work (task outputs, logs, reports)
DEMAND_REFRESH = 60.0  # seconds a count of the VMs' recent tasks (a keep-ready tie-breaker) is reused
DISK_LOOK_INTERVAL = 1.0  # seconds between looks at the engine's own free disk (testlab/engine/disk.py)


class DatabaseOutage(Exception):
    """Raised inside the engine to leave the loop and wait for the database."""


class Engine:
    def __init__(self, settings: Settings, options: EngineOptions | None = None) -> None:
        self.settings = settings
        self.options = options or EngineOptions.from_env()
        self.db = EngineDatabase(settings.database_url)
        self.lease = LeaseKeeper(settings.database_url, self.options.lease_ttl)
        self.outcomes = Outcomes(settings, self.options)
        self.connections = Connections(self.options)
        self.disk = EngineDisk(settings.home, self.options.engine_min_free_disk, self.options.max_log_bytes)
        self.operations = Operations(
            self.db, self.outcomes, self.connections, self.lease.ensure, self.disk.write_failed
        )
        self.notifier = Notifier(settings, self.db, self.options.notify_retry)
        self.inflight: dict[str, asyncio.Task] = {}  # VM name -> its operation
        self.inflight_work: dict[str, Any] = {}  # VM name -> what that operation does
        self.checking: dict[str, asyncio.Task] = {}  # host name -> its health check
        self.killing: dict[int, asyncio.Task] = {}  # task id -> the kill of its command
        self.blocked: dict[str, str] | None = None  # as last stored
        self.exit_code = 0
        self.rounds = 0
        self._next_wait = self.options.tick
        self._demand: dict[int, int] = {}
        self._demand_read = -DEMAND_REFRESH  # never: the first round counts
        self._disk_looked = -DISK_LOOK_INTERVAL  # never: the first round looks
        self._last_views = LastViews()  # the last round's views, reused where nothing changed
        self._carried: Carried | None = None  # what the last plan leaves to the next (its quiet hosts)
        self._last_read = 0.0  # seconds the last round's read took (testlab/engine/planning.py)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_event = -1
        self._outage: BaseException | None = None
        self._fatal: BaseException | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ life cycle

    async def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Run until stopped (SIGTERM/SIGINT, stop()) or until `until()` (called off the loop) is true
        after a round. Returns the exit code: 0, or 1 when the lease was lost or the schema changed."""
        await asyncio.to_thread(check_schema, self.settings.database_url)
        self.db.epoch = await self.lease.acquire()
        log.info("engine %s holds the lease (epoch %s)", self.lease.holder, self.db.epoch)
        keeper = asyncio.create_task(self.lease.keep(self._fail))
        notifier = asyncio.create_task(self._send_notifications())
        why = "engine started"
        try:
            while not self._stop.is_set():
                try:
                    await self._serve(why, until)
                    break
                except DatabaseOutage as outage:
                    await self._ride_out(outage)
                    why = "database back"
        except LeaseLost as error:
            log.error("%s: this engine changes nothing more and stops", error)
            self.exit_code = 1
        except SchemaOutOfDate as error:
            log.error("%s; the engine stops", error)
            self.exit_code = 1
        finally:
            keeper.cancel()
            notifier.cancel()
            await self._abandon_operations()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connections.aclose(), SHUTDOWN_GRACE)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.lease.release(), SHUTDOWN_GRACE)
            self.lease.close()
            self.db.close()
        return self.exit_code

    def _fail(self, error: BaseException) -> None:
        """A coroutine found that the engine must stop (a lost lease) or pause (a database outage);
        anything else it met is reported and the engine goes on."""
        if isinstance(error, LeaseLost):
            self._fatal = error
        elif is_database_outage(error):
            self._outage = self._outage or error
        else:
            log.error("%s: %s", type(error).__name__, error)
        self._wake.set()

    def _check_failures(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._outage is not None:
            raise DatabaseOutage(describe_outage(self._outage))

    async def _serve(self, why: str, until: Callable[[], bool] | None) -> None:
        """Reconcile, then plan round after round until stopped."""
        try:
            for line in await self.db.read(recover_staged_jobs, self.settings):
                log.warning("interrupted submission: %s", line)
            self.connections.configure(await self.db.read(reading.host_configs))
            for work in await reconcile(self.db, self.outcomes, self.connections, why=why):
                self._spawn(work.vm.name, work, lambda w=work: self.operations.run_task(w, attach=True))
        except Exception as error:
            if is_database_outage(error):
                raise DatabaseOutage(describe_outage(error)) from None
            raise
        await self._first_host_checks()
        poller = asyncio.create_task(self._watch_events())
        backoff = 1.0
        try:
            while not self._stop.is_set():
                self._check_failures()
                try:
                    started = time.perf_counter()
                    await self._round()
                    ROUND_SECONDS.observe(time.perf_counter() - started)
                    self.lease.last_round = utcnow()
                    backoff = 1.0
                except (LeaseLost, SchemaOutOfDate, DatabaseOutage):
                    raise
                except Exception as error:
                    if is_database_outage(error):
                        raise DatabaseOutage(describe_outage(error)) from None
                    await self._round_failed(error, backoff)
                    backoff = min(backoff * 2, self.options.round_backoff_cap)
                    continue
                if until is not None and await asyncio.to_thread(until):
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_wait):  # no task to start, unlike wait_for
                        await self._wake.wait()
                self._wake.clear()
        finally:
            poller.cancel()

    async def _round_failed(self, error: Exception, backoff: float) -> None:
        log.error("planning round failed (%s: %s); next try in %.0f s", type(error).__name__, error, backoff)
        log.debug("planning round failure", exc_info=error)
        await asyncio.to_thread(check_schema, self.settings.database_url)  # a newer schema stops the engine
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), backoff)

    async def _ride_out(self, outage: DatabaseOutage) -> None:
        """Pause until the database answers again and the lease is confirmed ours. Commands go on
        running on their agents; operations in flight are abandoned, as at a restart."""
        log.error("database unreachable (%s): engine paused, commands keep running on their agents", outage)
        await self._abandon_operations()
        started = time.monotonic()
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.db.read(reading.last_event_id)
                await self.lease.confirm()
                break
            except LeaseLost:
                raise
            except Exception as error:
                if not is_database_outage(error):
                    raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 5.0)
        self._outage = None
        if not self._stop.is_set():
            log.warning(
                "database back after %.1f s: re-reading the lab as at a restart", time.monotonic() - started
            )

    async def _abandon_operations(self) -> None:
        """Cancel every coroutine in flight; the work they drive is not undone (reconcile re-attaches)."""
        tasks = [*self.inflight.values(), *self.killing.values(), *self.checking.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        self.inflight.clear()
        self.inflight_work.clear()
        self.killing.clear()
        self.checking.clear()

    async def _send_notifications(self) -> None:
        """The outbox's sender, beside the loop; a database outage or a lost lease is the loop's to
        handle, and the sender starts again after it."""
        while True:
            try:
                await self.notifier.run()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - reported to the loop, retried in a while
                self._fail(error)
                await asyncio.sleep(5)

    async def _watch_events(self) -> None:
        """Another writer's commit (a job submitted, a VM set by an administrator) wakes the engine at
        once (testlab/db/wakeup.py); its own writes do not (it knows). The event history, the change
        feed, is also polled every `poll_interval` for what a lost wake-up did not tell."""
        async with wakeup.listen(self.settings.database_url, silent_actor=self.db.actor) as wakeups:
            while True:
                if await wakeups.wait(self.options.poll_interval):
                    self._wake.set()
                    self.notifier.wake.set()
                    continue
                try:
                    last = await self.db.read(reading.last_event_id)
                except Exception:  # noqa: BLE001 - the round itself notices and reports an outage
                    last = self._last_event
                if last != self._last_event:
                    self._last_event = last
                    self._wake.set()
                    self.notifier.wake.set()

    # ------------------------------------------------------------------ one round

    def _wait_after(self, view: View) -> float:
        """How long the next round may wait for a wake-up: a tick while anything is queued or in
        flight, else until the next due check (an idle engine wakes every `idle_tick` at most)."""
        tick = self.options.tick
        if self.inflight or view.snapshot.tasks or view.to_kill:
            return tick
        if view.next_due is None:
            return max(tick, self.options.idle_tick)
        until = (view.next_due - utcnow()).total_seconds()
        return min(max(tick, until), max(tick, self.options.idle_tick))

    async def _round(self) -> None:
        """Read, plan and record in one trip to the database thread (testlab/engine/planning.py),
        then start what it recorded and what else the read found due."""
        self.rounds += 1
        paused, notices = self.disk.check(await self._look_at_disk())
        for notice in notices:
            log.warning("%s", notice)
            await self.db.write(record_notice, notice)
        fresh = time.monotonic() - self._demand_read < DEMAND_REFRESH
        done = await self.db.on_thread(
            run_round,
            self.db,
            RoundInputs(
                settings=self.settings,
                options=self.options,
                inflight=frozenset(self.inflight),
                now=time.time(),
                demand=self._demand if fresh else None,
                last=self._last_views,
                carried=self._carried,
                paused=paused,
                blocked=self.blocked,
                last_read=self._last_read,
            ),
        )
        view, self._carried, self._last_read = done.view, done.carried, done.read_seconds
        if not fresh:
            self._demand, self._demand_read = view.demand, time.monotonic()
        self._next_wait = self._wait_after(view)
        self.connections.configure(view.host_configs)
        self._drop_stale_followers(view.running)
        if done.blocked != self.blocked:
            for subject, reason in done.blocked.items():
                if (self.blocked or {}).get(subject) != reason:
                    log.info("work for %s is blocked: %s", subject, reason)
            self.blocked = done.blocked
        for work in done.work:
            self._spawn(work.vm.name, work, self._operation(work))
        for kill in view.to_kill:
            if kill.task_id not in self.killing:
                self._kill(kill)
        for check in view.to_monitor:
            self._spawn(check.vm.name, check, lambda c=check: self.operations.monitor(c))
        for host in view.host_checks:
            if host.name not in self.checking:
                self._check_host(host)
        for vm in view.expired:
            if vm.name not in self.inflight:
                await self.db.write(self.outcomes.operation_expired, vm.id)

    async def _look_at_disk(self) -> int | None:
        """The engine's free disk, looked at in a file thread once a DISK_LOOK_INTERVAL at most; None
        in between (a write that fails for room pauses new work at once all the same)."""
        now = time.monotonic()
        if now - self._disk_looked < DISK_LOOK_INTERVAL:
            return None
        self._disk_looked = now
        return await asyncio.to_thread(self.disk.free)

    def _drop_stale_followers(self, running: dict[int, str]) -> None:
        """A follower whose task is no longer running with its command (an administrator's power
        cycle requeued it, a watchdog ended it) has nothing left to follow: it is cancelled."""
        for vm_name, work in list(self.inflight_work.items()):
            if isinstance(work, TaskWork) and running.get(work.task_id) != work.command_id:
                task = self.inflight.get(vm_name)
                if task is not None and not task.done():
                    log.info("task %s is no longer running as followed: dropping its follower", work.task_id)
                    task.cancel()

    async def _first_host_checks(self) -> None:
        """Learn the hosts' health (reachable, free disk) before the first plan acts on them; a host
        slow to answer is not waited for beyond a few seconds (its check goes on in the background)."""
        try:
            view = await self.db.read(reading.read_round, self.options, frozenset(self.inflight), time.time())
        except Exception as error:
            if is_database_outage(error):
                raise DatabaseOutage(describe_outage(error)) from None
            raise
        for host in view.host_checks:
            self._check_host(host)
        if self.checking:
            await asyncio.wait(list(self.checking.values()), timeout=FIRST_CHECKS_WAIT)

    def _check_host(self, check: HostCheck) -> None:
        async def run() -> None:
            try:
                await self.operations.check_host(check)
            except Exception as error:  # noqa: BLE001 - a lost lease or an outage: the loop decides
                self._fail(error)

        task = asyncio.create_task(run())
        self.checking[check.name] = task
        task.add_done_callback(lambda _: self.checking.pop(check.name, None))

    def _kill(self, kill: KillWork) -> None:
        async def run() -> None:
            try:
                await self.operations.kill(kill)
                await asyncio.sleep(2)  # the follower records the outcome; re-kill only if it did not
            except Exception as error:  # noqa: BLE001 - a lost lease or an outage: the loop decides
                self._fail(error)

        task = asyncio.create_task(run())
        self.killing[kill.task_id] = task
        task.add_done_callback(lambda _: self.killing.pop(kill.task_id, None))

    def _operation(self, work: RevertWork | PowerOffWork | TaskWork) -> Callable[[], Awaitable[None]]:
        if isinstance(work, RevertWork):
            return lambda: self.operations.revert(work)
        if isinstance(work, PowerOffWork):
            return lambda: self.operations.power_off(work)
        return lambda: self.operations.run_task(work)

    def _spawn(self, vm_name: str, work: Any, start: Callable[[], Awaitable[None]]) -> None:
        """Run an operation as a task of its own. The coroutine is created inside the task, so an
        operation cancelled before it began leaves nothing un-awaited behind."""
        task = asyncio.create_task(self._guarded(work, start))
        self.inflight[vm_name] = task
        self.inflight_work[vm_name] = work

        def done(finished: asyncio.Task) -> None:
            if self.inflight.get(vm_name) is finished:
                del self.inflight[vm_name]
                self.inflight_work.pop(vm_name, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _guarded(self, work: Any, start: Callable[[], Awaitable[None]]) -> None:
        """An operation that dies of an unexpected error must not leave its VM busy for ever: the
        error is recorded like any infrastructure error (the task requeued, the VM's count raised).
        A lost lease or a database outage is not the VM's: the engine stops or pauses instead."""
        started = time.perf_counter()
        try:
            await start()
            kind = _KINDS.get(type(work), "other")
            OPERATION_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bug or an unmapped error; recorded, not hidden
            if isinstance(error, LeaseLost) or is_database_outage(error):
                self._fail(error)
                return
            log.error(
                "operation on %s failed unexpectedly: %s: %s", work.vm.name, type(error).__name__, error
            )
            log.debug("operation failure", exc_info=error)
            reason = f"engine error: {type(error).__name__}: {error}"
            try:
                if isinstance(work, TaskWork):
                    await self.db.write(self.outcomes.task_requeue, work.task_id, reason)
                else:
                    await self.db.write(self.outcomes.vm_error, work.vm.id, reason)
            except Exception as second:  # noqa: BLE001 - the database or the lease: the loop decides
                self._fail(second)


_KINDS = {RevertWork: "revert", PowerOffWork: "power_off", TaskWork: "task", MonitorWork: "monitor"}


def run_engine(settings: Settings, options: EngineOptions | None = None) -> int:
    """`testlab engine`: run in the foreground until SIGTERM or SIGINT; returns the exit code."""

    async def main() -> int:
        engine = Engine(settings, options)
        loop = asyncio.get_running_loop()
        # asyncio.to_thread's workers (the engine's file work), named for `top -H` like its other threads
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                IO_THREADS, "testlab-io", initializer=name_os_thread, initargs=("testlab-io",)
            )
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, engine.stop)
        return await engine.run()

    return asyncio.run(main())
