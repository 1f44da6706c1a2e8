"""The engine's operations on VMs and tasks, as coroutines.

Each one turns what happens outside (hypervisor calls, agent calls) into outcomes recorded by the
store, and sorts errors into their classes: an infrastructure error counts against the VM and
requeues the task; a test failure is the task's result; an engine shutdown leaves everything as the
database says, for the next engine to re-attach.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from testlab.agent.client import AgentError, AgentUnreachable, CommandState, CommandUnknown
from testlab.engine.connections import Connections
from testlab.engine.store import Store
from testlab.engine.work import KillWork, MonitorWork, PowerOffWork, RevertWork, TaskWork
from testlab.hypervisor.base import DomainState, HypervisorError

log = logging.getLogger("testlab.engine")

Database = Callable[..., Awaitable[Any]]


class Operations:
    def __init__(self, store: Store, connections: Connections, database: Database) -> None:
        self.store = store
        self.connections = connections
        self.db = database  # runs a store method on the database thread

    # ------------------------------------------------------------------ VMs

    async def revert(self, work: RevertWork) -> None:
        vm = work.vm
        try:
            driver = self.connections.driver(vm.host)
            await driver.revert(vm.domain, vm.snapshot, timeout=work.timeout)
            agent = await self.connections.agent(vm)
            info = await agent.wait_until_up(
                timeout=self.store.options.agent_boot_timeout, not_boot_id=vm.boot_id
            )
            if work.sleep > 0:
                await self.db(self.store.revert_settling, vm.id, info.boot_id, None)
                await asyncio.sleep(work.sleep)
            await self.db(self.store.revert_done, vm.id, info.boot_id)
        except (HypervisorError, AgentError) as error:
            log.warning("revert of %s failed: %s", vm.name, error)
            await self.db(self.store.vm_error, vm.id, f"revert failed: {_describe(error)}")

    async def power_off(self, work: PowerOffWork) -> None:
        vm = work.vm
        try:
            await self.connections.driver(vm.host).power_off(vm.domain, timeout=work.timeout)
            await self.db(self.store.poweroff_done, vm.id)
        except HypervisorError as error:
            await self.db(self.store.vm_error, vm.id, f"power off failed: {_describe(error)}")

    async def monitor(self, work: MonitorWork) -> None:
        """Check an offline VM: it is back when a revert and an agent check succeed."""
        vm = work.vm
        if not await self.db(self.store.monitor_begin, vm.id):
            return
        driver = self.connections.driver(vm.host)
        try:
            await driver.revert(vm.domain, vm.snapshot, timeout=work.timeout)
            agent = await self.connections.agent(vm)
            info = await agent.wait_until_up(timeout=self.store.options.agent_boot_timeout)
            await driver.power_off(vm.domain, timeout=self.store.options.poweroff_timeout)
            await self.db(self.store.monitor_result, vm.id, True, f"reverted, agent {info.version} answered")
        except (HypervisorError, AgentError) as error:
            await self.db(self.store.monitor_result, vm.id, False, _describe(error))

    # ------------------------------------------------------------------ tasks

    async def run_task(self, work: TaskWork, *, attach: bool = False) -> None:
        """Start the task's command (or re-attach to it after an engine restart) and see it to its end."""
        try:
            agent = await self.connections.agent(work.vm, work.agent_url)
            if not attach:
                info = await agent.info()
                if info.boot_id != work.boot_id:
                    raise CommandUnknown(f"the VM rebooted before the task started (boot {info.boot_id[:8]})")
                for local, remote in work.uploads:
                    await agent.upload(local, remote)
                await agent.start(
                    work.command_id,
                    shell=work.command,
                    cwd=work.remote_dir,
                    env=work.env,
                    timeout=work.timeout,
                )
            work.output_dir.mkdir(parents=True, exist_ok=True)
            log_path = work.output_dir / "log"
            state = await self._follow(agent, work, log_path)
            missing = await self._collect(agent, work)
            detail = _result_detail(state) + (
                f"; no artifact matched {', '.join(missing)}" if missing else ""
            )
            await self.db(self.store.task_finished, work.task_id, state.state, state.exit_code, detail)
        except CommandUnknown as error:
            await self.db(self.store.task_requeue, work.task_id, f"the VM lost the task: {error}")
        except AgentUnreachable as error:
            await self.db(self.store.task_requeue, work.task_id, f"agent unreachable: {error}")
        except (AgentError, HypervisorError, OSError) as error:
            await self.db(self.store.task_requeue, work.task_id, f"infrastructure error: {_describe(error)}")

    async def _follow(self, agent, work: TaskWork, log_path: Path) -> CommandState:
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log_file:

            async def append(chunk: bytes) -> None:
                await asyncio.to_thread(_append, log_file, chunk)

            try:
                return await asyncio.wait_for(
                    agent.wait(work.command_id, boot_id=work.boot_id, on_output=append, output_offset=offset),
                    timeout=work.deadline_seconds,
                )
            except TimeoutError:
                # The agent should have enforced the timeout; it did not answer in time, so the engine does.
                await agent.kill(work.command_id)
                return await agent.status(work.command_id)

    async def _collect(self, agent, work: TaskWork) -> list[str]:
        """Fetch the declared artifacts; returns the patterns that matched nothing."""
        missing = []
        if not work.artifacts:
            return missing
        target = work.output_dir / "artifacts"
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".artifacts-", dir=work.output_dir))
        try:
            for pattern in work.artifacts:
                files = await agent.download(f"{work.remote_dir}/{pattern}", staging)
                if not files:
                    missing.append(pattern)
            await asyncio.to_thread(_move_tree, staging / work.remote_dir, target)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return missing

    async def kill(self, work: KillWork) -> None:
        """Kill a running command (cancel, maintenance with abort); its follower records the outcome."""
        try:
            agent = await self.connections.agent(work.vm, work.agent_url)
            await agent.kill(work.command_id)
        except (AgentError, HypervisorError) as error:
            log.warning("could not kill %s on %s: %s", work.command_id, work.vm.name, error)

    async def domain_running(self, host: str, domain: str) -> bool:
        try:
            state = await self.connections.driver(host).state(domain, timeout=30)
        except HypervisorError:
            return False
        return state == DomainState.RUNNING


def _append(log_file, chunk: bytes) -> None:
    log_file.write(chunk)
    log_file.flush()


def _move_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.replace(destination)


def _result_detail(state: CommandState) -> str:
    if state.state == "exited":
        return f"exit code {state.exit_code}"
    if state.state == "timeout":
        return "timed out: killed"
    return f"{state.state}" + (f" (exit code {state.exit_code})" if state.exit_code is not None else "")


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
