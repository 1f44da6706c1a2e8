"""The engine's operations on VMs and tasks, as coroutines.

Each one turns what happens outside (hypervisor calls, agent calls) into outcomes recorded through the
engine's fenced transactions, and sorts errors into their classes: an infrastructure error counts
against the VM and requeues the task; a test failure is the task's result; an engine shutdown leaves
everything as the database says, for the next engine to re-attach.

Before each call that changes something outside (a revert, a power off, an upload, a start, a kill)
an operation passes the lease fence: an engine that cannot confirm its lease acts on nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from testlab.agent.client import (
    AgentClient,
    AgentError,
    AgentUnreachable,
    BootChanged,
    CommandState,
    CommandUnknown,
    ProtocolError,
)
from testlab.engine import files
from testlab.engine.connections import Connections
from testlab.engine.database import EngineDatabase
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from testlab.engine.work import HostCheck, KillWork, MonitorWork, PowerOffWork, RevertWork, TaskWork
from testlab.hypervisor.base import HostUnreachable, HypervisorError
from testlab.metrics import operation_failed
from testlab.services.results import replace_task_results

log = logging.getLogger("testlab.engine")

DEADLINE_KILL_WAIT = 2.0  # seconds the agent gets to end a command killed at the engine's deadline
FULL_DISK = 1 << 20  # bytes: a VM with less free disk when a command failed had its disk filled
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT)


class TransferTimedOut(Exception):
    """Uploads or artifact downloads overran their overall deadline."""


class ArtifactsRefused(Exception):
    """The agent refused the task's artifact set (too many files, too many bytes, too slow to list):
    the task's own doing, so it fails the task, not the VM."""


class Operations:
    def __init__(
        self,
        db: EngineDatabase,
        outcomes: Outcomes,
        connections: Connections,
        fence: Callable[[], Awaitable[None]],
        engine_disk_full: Callable[[OSError], None] = lambda error: None,
    ) -> None:
        self.db = db
        self.outcomes = outcomes
        self.connections = connections
        self.fence = fence  # returns once the lease is confirmed; raises LeaseLost
        self.engine_disk_full = engine_disk_full  # the engine pauses new work until space is back
        self.options: EngineOptions = outcomes.options

    # ------------------------------------------------------------------ VMs

    async def revert(self, work: RevertWork) -> None:
        vm = work.vm
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            timeout = self.connections.deadline(vm.host, "revert", work.timeout)
            agent = self.connections.client(
                vm, await driver.revert_and_locate(vm.domain, vm.snapshot, timeout=timeout)
            )
            info = await agent.wait_until_up(timeout=self.options.agent_boot_timeout, not_boot_id=vm.boot_id)
            self.connections.answered(vm, info.boot_id)
            if work.sleep > 0:
                await self.db.write(self.outcomes.revert_settling, vm.id, info.boot_id)
                await asyncio.sleep(work.sleep)
            await self.db.write(self.outcomes.revert_done, vm.id, info.boot_id)
        except HostUnreachable as error:
            operation_failed("revert", error)
            await self.db.write(self.outcomes.host_error, vm.id, f"revert of {vm.name}: {_describe(error)}")
        except (HypervisorError, AgentError) as error:
            operation_failed("revert", error)
            log.warning("revert of %s failed: %s", vm.name, error)
            await self.db.write(self.outcomes.vm_error, vm.id, f"revert failed: {_describe(error)}")

    async def power_off(self, work: PowerOffWork) -> None:
        vm = work.vm
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            await driver.power_off(
                vm.domain, timeout=self.connections.deadline(vm.host, "power_off", work.timeout)
            )
            await self.db.write(self.outcomes.poweroff_done, vm.id)
        except HostUnreachable as error:
            operation_failed("power_off", error)
            await self.db.write(
                self.outcomes.host_error, vm.id, f"power off of {vm.name}: {_describe(error)}"
            )
        except HypervisorError as error:
            operation_failed("power_off", error)
            await self.db.write(self.outcomes.vm_error, vm.id, f"power off failed: {_describe(error)}")

    async def monitor(self, work: MonitorWork) -> None:
        """Check an offline VM: it is back when a revert and an agent check succeed."""
        vm = work.vm
        if not await self.db.write(self.outcomes.monitor_begin, vm.id):
            return
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            agent = self.connections.client(
                vm, await driver.revert_and_locate(vm.domain, vm.snapshot, timeout=work.timeout)
            )
            info = await agent.wait_until_up(timeout=self.options.agent_boot_timeout)
            await self.fence()
            await driver.power_off(vm.domain, timeout=self.options.poweroff_timeout)
            await self.db.write(
                self.outcomes.monitor_result, vm.id, True, f"reverted, agent {info.version} answered"
            )
        except (HypervisorError, AgentError) as error:
            operation_failed("monitor", error)
            await self.db.write(self.outcomes.monitor_result, vm.id, False, _describe(error))

    async def check_host(self, work: HostCheck) -> None:
        """A host's health: does its hypervisor answer, how much disk is free."""
        log.info("checking host %s", work.name)
        try:
            health = await self.connections.driver(work.name).health(timeout=work.timeout)
            reachable, free, detail = health.reachable, health.free_disk_bytes, health.detail
        except HypervisorError as error:
            reachable, free, detail = False, None, _describe(error)
        await self.db.write(self.outcomes.host_checked, work.id, reachable, free, detail)

    # ------------------------------------------------------------------ tasks

    async def run_task(self, work: TaskWork, *, attach: bool = False) -> None:
        """Start the task's command (or re-attach to it after an engine restart) and see it to its end."""
        record = self.outcomes
        try:
            agent = await self.connections.agent(work.vm, work.agent_url, boot_id=work.boot_id)
            log_file, to_upload = await asyncio.to_thread(
                files.open_try, work, self.options.max_log_bytes, attach=attach
            )
            try:
                if not attach:
                    await self._start(agent, work, to_upload)
                state = await self._follow(agent, work, log_file)
            finally:
                await asyncio.to_thread(log_file.close)
            failure = None
            try:
                missing = await self._within_transfer_deadline(
                    "collecting artifacts", self._collect(agent, work)
                )
            except ArtifactsRefused as refused:
                missing, failure = [], f"artifacts refused: {refused}"
            summary = None
            if work.reports:
                cases, problems, summary = await asyncio.to_thread(files.read_reports, work)
                await self.db.write(replace_task_results, work.task_id, cases, problems)
            detail = _result_detail(state) + (
                f"; no artifact matched {', '.join(missing)}" if missing else ""
            )
            if state.state == "exited" and state.exit_code != 0:
                detail += await self._disk_note(agent)
            await self.db.write(
                record.task_finished,
                work.task_id,
                state.state,
                state.exit_code,
                detail,
                lost=state.lost,
                failure=failure,
                report=summary,
            )
        except HostUnreachable as error:
            operation_failed("task", error)
            await self.db.write(record.host_error, work.vm.id, f"task {work.task_id}: {_describe(error)}")
        except CommandUnknown as error:
            operation_failed("task", error)
            await self.db.write(record.task_requeue, work.task_id, f"the VM lost the task: {error}")
        except AgentUnreachable as error:
            operation_failed("task", error)
            await self.db.write(record.task_requeue, work.task_id, f"agent unreachable: {error}")
        except OSError as error:
            operation_failed("task", error)
            # Agents and hypervisors never raise OSError here (their errors are typed): this is the
            # engine's own machine failing to write the task's files.
            full = error.errno in DISK_FULL_ERRORS
            if full:
                self.engine_disk_full(error)
            await self.db.write(
                record.engine_problem, work.task_id, f"{_describe(error)}", count_try=not full
            )
        except (AgentError, HypervisorError, TransferTimedOut) as error:
            operation_failed("task", error)
            await self.db.write(
                record.task_requeue, work.task_id, f"infrastructure error: {_describe(error)}"
            )

    async def _disk_note(self, agent: AgentClient) -> str:
        """A failed command that left its VM's disk full did it to itself: say so next to the result."""
        try:
            info = await agent.info()
        except AgentError:
            return ""
        if info.free_disk_bytes < FULL_DISK:
            return f"; the VM's disk was full ({info.free_disk_bytes} bytes free)"
        return ""

    async def _start(self, agent: AgentClient, work: TaskWork, to_upload: list[tuple[Path, str]]) -> None:
        await self.fence()

        async def send() -> None:
            for local, remote in to_upload:
                await agent.upload(local, remote)

        await self._within_transfer_deadline("uploading the job's files", send())
        await self.fence()
        try:
            await agent.start(
                work.command_id,
                shell=work.command,
                cwd=work.remote_dir,
                env=work.env,
                timeout=work.timeout,
                boot_id=work.boot_id,
            )
        except BootChanged as changed:
            raise CommandUnknown(f"the VM rebooted before the task started ({changed})") from None

    async def _within_transfer_deadline(self, what: str, transfer: Awaitable):
        try:
            async with asyncio.timeout(self.options.transfer_timeout):
                return await transfer
        except TimeoutError:
            raise TransferTimedOut(f"{what} took longer than {self.options.transfer_timeout:g} s") from None

    async def _follow(self, agent: AgentClient, work: TaskWork, capped: files.CappedLog) -> CommandState:
        """Follow the command's output into its log until it ends, or until the engine's own deadline
        for it, counted from the task's real start (a re-attached task keeps its original deadline)."""

        async def append(chunk: bytes) -> None:
            await asyncio.to_thread(capped.append, chunk)

        try:
            # asyncio.timeout rather than wait_for: no task of its own to start and finish each time
            async with asyncio.timeout(max(0.0, work.deadline - time.time())):
                return await agent.wait(
                    work.command_id, boot_id=work.boot_id, on_output=append, output_offset=capped.received
                )
        except TimeoutError:
            # The agent should have enforced the timeout; it did not end the command in time, so the
            # engine does, and the result is a timeout whatever the agent reports.
            log.warning("task %s overran the engine's deadline: killing it", work.task_id)
            await self.fence()
            state = await agent.kill(work.command_id, wait=DEADLINE_KILL_WAIT)
            if state.state == "exited":
                return state
            return dataclasses.replace(state, state="timeout")

    async def _collect(self, agent: AgentClient, work: TaskWork) -> list[str]:
        """Fetch the declared artifacts; returns the patterns that matched nothing."""
        missing: list[str] = []
        if not work.artifacts and not work.reports:
            return missing
        target = work.output_dir / "artifacts"
        staging = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix=files.ARTIFACT_STAGING_PREFIX, dir=work.output_dir
            )
        )
        try:
            for pattern in dict.fromkeys([*work.artifacts, *work.reports]):
                try:
                    found = await agent.download(f"{work.remote_dir}/{pattern}", staging)
                except ProtocolError as error:
                    if (error.code or "").startswith("artifacts_"):
                        raise ArtifactsRefused(f"{pattern}: {error}") from None
                    raise
                if not found and pattern in work.artifacts:
                    missing.append(pattern)
            await asyncio.to_thread(files.move_tree, staging / work.remote_dir, target)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return missing

    async def kill(self, work: KillWork) -> None:
        """Kill a running command (cancel, maintenance with abort); its follower records the outcome."""
        try:
            agent = await self.connections.agent(work.vm, work.agent_url)
            await self.fence()
            await agent.kill(work.command_id)
        except (AgentError, HypervisorError) as error:
            log.warning("could not kill %s on %s: %s", work.command_id, work.vm.name, error)


def _result_detail(state: CommandState) -> str:
    if state.state == "exited":
        return f"exit code {state.exit_code}"
    if state.state == "timeout":
        return "timed out: killed"
    return f"{state.state}" + (f" (exit code {state.exit_code})" if state.exit_code is not None else "")


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
