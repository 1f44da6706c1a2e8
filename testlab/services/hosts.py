"""Host operations that need the hypervisor backend: preparing local domains, power cycles, power off.

Blocking backend calls run outside any database transaction (a power cycle may take minutes; SQLite's
write lock must not wait for it), each with a deadline that does not hold the process at exit.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Event, Host, Task
from testlab.db.session import run_transaction
from testlab.domain.labfile import HostDef, LabDef
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.hypervisor import HostConfig, open_host
from testlab.hypervisor.base import Backend, OperationTimedOut
from testlab.lifecycle import UseKind
from testlab.services.errors import UserError
from testlab.services.tasks import requeue_task
from testlab.services.transitions import end_operation, record_event, set_vm_status
from testlab.services.uses import begin_outside_use, end_outside_use
from testlab.threads import call_with_deadline


def host_config(host: Host | HostDef | Row) -> HostConfig:
    """A host's connection settings, from its database row or its lab-file definition."""
    return HostConfig(
        name=host.name,
        backend=host.backend,
        uri=host.uri,
        commands=dict(host.commands or {}),
        agent_token_file=host.agent_token_file,
        options=dict(host.options or {}),
    )


def backend_for(host: Host | HostDef) -> Backend:
    return open_host(host_config(host))


def prepare_domains(lab: LabDef) -> None:
    """Create missing local sandbox domains with their initial snapshot (other backends: nothing).

    Idempotent, and done before the lab's rows are written: a copy of a sandbox disk must not hold the
    database's write lock."""
    backends = {h.name: backend_for(h) for h in lab.hosts if h.backend == "local"}
    for vm in lab.vms:
        if vm.host in backends:
            backends[vm.host].ensure_domain(vm.domain, vm.snapshot)


def _get_host(session: Session, name: str) -> Host:
    host = session.scalars(select(Host).where(Host.name == name)).one_or_none()
    if host is None:
        raise UserError(f"host {name}: no such host")
    return host


def _power_cycle_started(host: str) -> str:
    return f"power cycle of {host} started"


def power_cycled_since(session: Session, host: Host, since: datetime) -> bool:
    """Whether a power cycle of the host was started at `since` or later: an agent that comes back
    without its command then lost it to the power, not to its VM (the power cycle's own transaction,
    which requeues the host's tasks, may come after the engine has seen the agent back)."""
    return (
        session.scalar(
            select(Event.id)
            .where(
                Event.host_id == host.id,
                Event.kind == "host",
                Event.time >= since,
                Event.reason.startswith(_power_cycle_started(host.name), autoescape=True),
            )
            .limit(1)
        )
        is not None
    )


def power_cycle(url: str, name: str, *, timeout: float, by: str, max_tries: int, jobs_dir: Path) -> str:
    """Power-cycle the host. Every VM of it that was active is marked dirty (reverted before use);
    the tasks that were running there are requeued at once, with their try used but nothing charged to
    their VMs: the work died with the power, whatever the agents will say when they are back. (The
    engine drops its followers of those tasks as soon as it sees them requeued.)"""

    def started(session: Session) -> HostConfig:
        host = _get_host(session, name)
        record_event(session, "host", f"{_power_cycle_started(host.name)} by {by}", host_id=host.id)
        return host_config(host)

    config = run_transaction(url, started, actor=by)
    try:
        call_with_deadline(open_host(config).power_cycle, timeout, f"power cycle of host {name}")
    except TimeoutError as error:
        raise OperationTimedOut(str(error), host=name) from None

    def done(session: Session) -> tuple[int, int]:
        host = _get_host(session, name)
        marked = requeued = 0
        reason = f"host {host.name} power-cycled by {by}"
        for vm in session.scalars(select(VM).where(VM.host_id == host.id)):
            if vm.status not in (VMStatus.OFF, VMStatus.OFFLINE):
                use_id = begin_outside_use(session, vm, UseKind.POWER_CYCLE, actor=by)
                end_outside_use(session, use_id)
            task = session.scalars(
                select(Task).where(Task.vm_id == vm.id, Task.status == TaskStatus.RUNNING)
            ).first()
            if task is not None:
                output = jobs_dir / str(task.job_id) / "tasks" / str(task.id)
                requeue_task(session, task, reason, count_try=True, max_tries=max_tries, output_dir=output)
                vm.boot_id = None
                end_operation(session, vm, VMStatus.DIRTY, reason, task=task)
                requeued += 1
                marked += 1
            elif vm.status in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.OFF) and vm.operation is None:
                vm.boot_id = None
                marked += set_vm_status(session, vm, VMStatus.DIRTY, reason)
        record_event(session, "host", f"power cycle of {host.name} done", host_id=host.id)
        return marked, requeued

    marked, requeued = run_transaction(url, done, actor=by)
    return f"host {name} power-cycled; {marked} VM(s) marked dirty, {requeued} task(s) requeued"


def power_off_vms(url: str, names: list[str] | None, *, by: str, timeout: float = 120.0) -> list[str]:
    """Power VMs off (every VM when `names` is None) and record them `off`, for when no engine runs
    (sandbox agents outlive the engine by design). VMs offline or in maintenance keep their status."""

    def selected(session: Session) -> list[tuple[str, str, HostConfig]]:
        query = select(VM, Host).join(Host, VM.host_id == Host.id).order_by(VM.name)
        if names is not None:
            query = query.where(VM.name.in_(names))
        rows = session.execute(query).all()
        missing = sorted(set(names or ()) - {vm.name for vm, _ in rows})
        if missing:
            raise UserError(f"vm {missing[0]}: no such VM")
        return [(vm.name, vm.domain, host_config(host)) for vm, host in rows]

    vms = run_transaction(url, selected, readonly=True)
    domains: dict[tuple[str, str], HostConfig] = {(c.name, d): c for _, d, c in vms}
    for (host, domain), config in domains.items():
        try:
            call_with_deadline(
                lambda c=config, d=domain: open_host(c).power_off(d), timeout, f"power off of {domain}"
            )
        except TimeoutError as error:
            raise OperationTimedOut(str(error), host=host, domain=domain) from None

    def record(session: Session) -> list[str]:
        done = []
        for vm in session.scalars(select(VM).where(VM.name.in_([name for name, _, _ in vms]))):
            vm.boot_id = None
            vm.operation = vm.operation_started = vm.operation_deadline = None
            if vm.status not in (VMStatus.OFFLINE, VMStatus.MAINTENANCE):
                set_vm_status(session, vm, VMStatus.OFF, f"powered off by {by}")
            done.append(vm.name)
        return done

    return run_transaction(url, record, actor=by)
