"""Reconciliation: decide, from what agents and hypervisors report, which work is alive.

It runs when the engine starts, and again when the database comes back after an outage (the engine
then re-reads everything as at a restart). A running task whose command still runs (or has finished)
on its agent, in the same VM boot, is re-attached and finishes as if nothing happened. Work that died
is requeued. A command the agent never heard of, in the same boot, never started: it is requeued
without using a try.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.agent.client import AgentError, CommandUnknown
from testlab.config import Settings
from testlab.db.models import VM, Host, Task
from testlab.domain.statuses import TaskStatus, VMRole, VMStatus
from testlab.engine.connections import Connections
from testlab.engine.database import EngineDatabase
from testlab.engine.dispatch import describe_task
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from testlab.engine.work import TaskWork, VMRef, vm_ref
from testlab.hypervisor.base import HypervisorError
from testlab.services.transitions import clear_operation, record_event, set_vm_status

CHECK_TIMEOUT = 20.0


async def reconcile(
    db: EngineDatabase, outcomes: Outcomes, connections: Connections, *, why: str = "engine started"
) -> list[TaskWork]:
    """Returns the tasks to re-attach."""
    running, idle = await db.read(reconcile_inputs, outcomes.settings, outcomes.options)
    verdicts = await asyncio.gather(*(_check_task(connections, work) for work in running))
    live = {w.task_id for w, v in zip(running, verdicts, strict=True) if v == "live"}
    never = {w.task_id for w, v in zip(running, verdicts, strict=True) if v == "never-started"}
    dead = {
        w.task_id: v for w, v in zip(running, verdicts, strict=True) if v not in ("live", "never-started")
    }
    idle_checks = await asyncio.gather(*(_check_idle(connections, vm) for vm in idle))
    idle_ok = {vm.id for vm, ok in zip(idle, idle_checks, strict=True) if ok}
    await db.write(reconcile_apply, outcomes, live, never, dead, idle_ok, why)
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


def reconcile_inputs(
    session: Session, settings: Settings, options: EngineOptions
) -> tuple[list[TaskWork], list[VMRef]]:
    """Running tasks (as work to re-attach) and idle VMs (to verify), as the database last knew them."""
    hosts = {h.id: h.name for h in session.scalars(select(Host))}
    running = []
    for task in session.scalars(select(Task).where(Task.status == TaskStatus.RUNNING)):
        vm = session.get(VM, task.vm_id)
        running.append(describe_task(session, task, vm, hosts[vm.host_id], settings, options))
    idle = [
        vm_ref(vm, hosts[vm.host_id])
        for vm in session.scalars(select(VM).where(VM.status == VMStatus.IDLE, VM.role != VMRole.DELETED))
    ]
    return running, idle


def reconcile_apply(
    session: Session,
    outcomes: Outcomes,
    live: set[int],
    never_started: set[int],
    dead: dict[int, str],
    idle_ok: set[int],
    why: str,
) -> None:
    """Make the database match what the agents and hypervisors reported (docs/engine.md, restart)."""
    for task_id in sorted(never_started):
        outcomes.task_requeue(
            session, task_id, f"{why} before the command started", count_try=False, vm_error=False
        )
    for task_id, reason in sorted(dead.items()):
        outcomes.task_requeue(session, task_id, f"{why} and the work had died: {reason}", vm_error=False)
    busy_vms = {session.get(Task, task_id).vm_id for task_id in live}
    for vm in session.scalars(select(VM)):
        if vm.id in busy_vms:
            continue
        if vm.operation == "monitor":
            clear_operation(vm)
        elif vm.status in (VMStatus.REVERTING, VMStatus.SLEEPING, VMStatus.RUNNING):
            clear_operation(vm)
            set_vm_status(session, vm, VMStatus.DIRTY, f"{why} during its operation")
        elif vm.status == VMStatus.IDLE and vm.id not in idle_ok:
            clear_operation(vm)
            set_vm_status(session, vm, VMStatus.DIRTY, f"{why}: agent not as left")
        elif vm.operation is not None:
            clear_operation(vm)
            if vm.status not in (VMStatus.OFF, VMStatus.OFFLINE, VMStatus.MAINTENANCE):
                set_vm_status(session, vm, VMStatus.DIRTY, f"{why} during its operation")
    record_event(
        session,
        "engine",
        f"{why}: {len(live)} task(s) re-attached, {len(dead)} requeued, {len(never_started)} never started",
    )
