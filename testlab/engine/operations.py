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
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from testlab.agent.client import AgentClient, AgentError, AgentUnreachable, CommandState, CommandUnknown
from testlab.engine import files
from testlab.engine.connections import Connections
from testlab.engine.database import EngineDatabase
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from testlab.engine.work import KillWork, MonitorWork, PowerOffWork, RevertWork, TaskWork
from testlab.hypervisor.base import HypervisorError

log = logging.getLogger("testlab.engine")

DEADLINE_KILL_WAIT = 2.0  # seconds the agent gets to end a command killed at the engine's deadline


class TransferTimedOut(Exception):
    """Uploads or artifact downloads overran their overall deadline."""


class Operations:
    def __init__(
        self,
        db: EngineDatabase,
        outcomes: Outcomes,
        connections: Connections,
        fence: Callable[[], Awaitable[None]],
    ) -> None:
        self.db = db
        self.outcomes = outcomes
        self.connections = connections
        self.fence = fence  # returns once the lease is confirmed; raises LeaseLost
        self.options: EngineOptions = outcomes.options

    # ------------------------------------------------------------------ VMs

    async def revert(self, work: RevertWork) -> None:
        vm = work.vm
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            await driver.revert(vm.domain, vm.snapshot, timeout=work.timeout)
            agent = await self.connections.agent(vm)
            info = await agent.wait_until_up(timeout=self.options.agent_boot_timeout, not_boot_id=vm.boot_id)
            if work.sleep > 0:
                await self.db.write(self.outcomes.revert_settling, vm.id, info.boot_id)
                await asyncio.sleep(work.sleep)
            await self.db.write(self.outcomes.revert_done, vm.id, info.boot_id)
        except (HypervisorError, AgentError) as error:
            log.warning("revert of %s failed: %s", vm.name, error)
            await self.db.write(self.outcomes.vm_error, vm.id, f"revert failed: {_describe(error)}")

    async def power_off(self, work: PowerOffWork) -> None:
        vm = work.vm
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            await driver.power_off(vm.domain, timeout=work.timeout)
            await self.db.write(self.outcomes.poweroff_done, vm.id)
        except HypervisorError as error:
            await self.db.write(self.outcomes.vm_error, vm.id, f"power off failed: {_describe(error)}")

    async def monitor(self, work: MonitorWork) -> None:
        """Check an offline VM: it is back when a revert and an agent check succeed."""
        vm = work.vm
        if not await self.db.write(self.outcomes.monitor_begin, vm.id):
            return
        try:
            driver = self.connections.driver(vm.host)
            await self.fence()
            await driver.revert(vm.domain, vm.snapshot, timeout=work.timeout)
            agent = await self.connections.agent(vm)
            info = await agent.wait_until_up(timeout=self.options.agent_boot_timeout)
            await self.fence()
            await driver.power_off(vm.domain, timeout=self.options.poweroff_timeout)
            await self.db.write(
                self.outcomes.monitor_result, vm.id, True, f"reverted, agent {info.version} answered"
            )
        except (HypervisorError, AgentError) as error:
            await self.db.write(self.outcomes.monitor_result, vm.id, False, _describe(error))

    # ------------------------------------------------------------------ tasks

    async def run_task(self, work: TaskWork, *, attach: bool = False) -> None:
        """Start the task's command (or re-attach to it after an engine restart) and see it to its end."""
        try:
            agent = await self.connections.agent(work.vm, work.agent_url)
            if attach:
                output = await asyncio.to_thread(files.output_dir, work)
            else:
                output = await self._start(agent, work)
            state = await self._follow(agent, work, output / "log")
            missing = await self._within_transfer_deadline("collecting artifacts", self._collect(agent, work))
            detail = _result_detail(state) + (
                f"; no artifact matched {', '.join(missing)}" if missing else ""
            )
            await self.db.write(
                self.outcomes.task_finished, work.task_id, state.state, state.exit_code, detail
            )
        except CommandUnknown as error:
            await self.db.write(self.outcomes.task_requeue, work.task_id, f"the VM lost the task: {error}")
        except AgentUnreachable as error:
            await self.db.write(self.outcomes.task_requeue, work.task_id, f"agent unreachable: {error}")
        except (AgentError, HypervisorError, OSError, TransferTimedOut) as error:
            await self.db.write(
                self.outcomes.task_requeue, work.task_id, f"infrastructure error: {_describe(error)}"
            )

    async def _start(self, agent: AgentClient, work: TaskWork) -> Path:
        info = await agent.info()
        if info.boot_id != work.boot_id:
            raise CommandUnknown(f"the VM rebooted before the task started (boot {info.boot_id[:8]})")
        output = await asyncio.to_thread(files.fresh_output_dir, work)
        to_upload = await asyncio.to_thread(files.uploads, work)
        await self.fence()

        async def send() -> None:
            for local, remote in to_upload:
                await agent.upload(local, remote)

        await self._within_transfer_deadline("uploading the job's files", send())
        await self.fence()
        await agent.start(
            work.command_id, shell=work.command, cwd=work.remote_dir, env=work.env, timeout=work.timeout
        )
        return output

    async def _within_transfer_deadline(self, what: str, transfer: Awaitable):
        try:
            async with asyncio.timeout(self.options.transfer_timeout):
                return await transfer
        except TimeoutError:
            raise TransferTimedOut(f"{what} took longer than {self.options.transfer_timeout:g} s") from None

    async def _follow(self, agent: AgentClient, work: TaskWork, log_path: Path) -> CommandState:
        """Follow the command's output into its log until it ends, or until the engine's own deadline
        for it, counted from the task's real start (a re-attached task keeps its original deadline)."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log_file:

            async def append(chunk: bytes) -> None:
                await asyncio.to_thread(files.append, log_file, chunk)

            try:
                return await asyncio.wait_for(
                    agent.wait(work.command_id, boot_id=work.boot_id, on_output=append, output_offset=offset),
                    timeout=max(0.0, work.deadline - time.time()),
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
        if not work.artifacts:
            return missing
        target = work.output_dir / "artifacts"
        staging = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix=files.ARTIFACT_STAGING_PREFIX, dir=work.output_dir
            )
        )
        try:
            for pattern in work.artifacts:
                if not await agent.download(f"{work.remote_dir}/{pattern}", staging):
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
