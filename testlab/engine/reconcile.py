"""Start-up reconciliation: decide, from what agents and hypervisors report, which work is alive.

A running task whose command still runs (or has finished) on its agent, in the same VM boot, is
re-attached and finishes as if nothing happened. Work that died is requeued. A command the agent
never heard of, in the same boot, never started: it is requeued without using a try.
"""

from __future__ import annotations

import asyncio

from testlab.agent.client import AgentError, CommandUnknown
from testlab.engine.connections import Connections
from testlab.engine.operations import Database
from testlab.engine.store import Store
from testlab.engine.work import TaskWork, VMRef
from testlab.hypervisor.base import HypervisorError

CHECK_TIMEOUT = 20.0


async def reconcile(store: Store, connections: Connections, db: Database) -> list[TaskWork]:
    """Returns the tasks to re-attach."""
    running, idle = await db(store.reconcile_inputs)
    verdicts = await asyncio.gather(*(_check_task(connections, work) for work in running))
    live = {w.task_id for w, v in zip(running, verdicts, strict=True) if v == "live"}
    never = {w.task_id for w, v in zip(running, verdicts, strict=True) if v == "never-started"}
    dead = {
        w.task_id: v for w, v in zip(running, verdicts, strict=True) if v not in ("live", "never-started")
    }
    idle_checks = await asyncio.gather(*(_check_idle(connections, vm) for vm in idle))
    idle_ok = {vm.id for vm, ok in zip(idle, idle_checks, strict=True) if ok}
    await db(store.reconcile_apply, live, never, dead, idle_ok)
    return [w for w in running if w.task_id in live]


async def _check_task(connections: Connections, work: TaskWork) -> str:
    """'live', 'never-started', or why the work is dead."""
    if not work.command_id or not work.boot_id:
        return "never-started"
    try:
        agent = await connections.agent(work.vm, work.agent_url)
        try:
            state = await asyncio.wait_for(agent.status(work.command_id), CHECK_TIMEOUT)
        except CommandUnknown:
            # Same agent boot and no such command: the engine died before starting it.
            info = await asyncio.wait_for(agent.info(), CHECK_TIMEOUT)
            return "never-started" if info.boot_id == work.boot_id else "the VM was reverted or rebooted"
        if state.boot_id != work.boot_id:
            return f"the VM rebooted (boot {state.boot_id[:8]})"
        return "live"
    except (AgentError, HypervisorError, TimeoutError) as error:
        return f"agent unreachable ({type(error).__name__})"


async def _check_idle(connections: Connections, vm: VMRef) -> bool:
    """An idle VM stays idle only if its agent answers in the boot the engine reverted it to."""
    if not vm.boot_id:
        return False
    try:
        agent = await connections.agent(vm)
        info = await asyncio.wait_for(agent.info(), CHECK_TIMEOUT)
    except (AgentError, HypervisorError, TimeoutError):
        return False
    return info.boot_id == vm.boot_id
