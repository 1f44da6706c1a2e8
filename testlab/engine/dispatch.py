"""Recording the plan's actions before they are carried out.

A VM becomes `reverting` before the revert is called; a task becomes `running`, with the command id it
will have on the agent, before the command is started. An action is only recorded if the rows it was
planned from are unchanged: the VM's version must still be the one the snapshot was read at (an
administrator's change in between, or an earlier action of the same plan, drops it; the next round
re-plans), a task must still be queued, and the action must still fit its host as the host is now
(`testlab.scheduler.room`: another VM of the host may have become active since the snapshot).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Blocked, Host, Job, Step, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow, load_rows, save_rows
from testlab.domain.jobfile import selected_by
from testlab.domain.statuses import TaskStatus, VMRole, VMStatus
from testlab.engine.options import EngineOptions
from testlab.engine.work import PowerOffWork, RevertWork, TaskWork, View, vm_ref
from testlab.scheduler.room import still_fitting
from testlab.scheduler.snapshot import (
    LIMIT_FIELDS,
    Action,
    HostLimits,
    Plan,
    PowerOff,
    Revert,
    StartTask,
    VMView,
)
from testlab.services.tasks import load_task_rows
from testlab.services.transitions import (
    batched_events,
    record_event,
    roll_up_job,
    set_task_status,
    set_vm_status,
)
from testlab.services.uses import begin_task_use, wipe_lifecycle

Work = RevertWork | PowerOffWork | TaskWork


def record_plan(
    session: Session, plan: Plan, view: View, settings: Settings, options: EngineOptions
) -> list[Work]:
    """Record what the plan does, as it still can (rows unchanged since the round's read, hosts with
    room), and return the work to run; its events are written together."""
    with batched_events(session):
        return _record(session, plan, view, settings, options)


def _record(
    session: Session, plan: Plan, view: View, settings: Settings, options: EngineOptions
) -> list[Work]:
    now = utcnow()
    names = {a.vm for a in plan.actions} | {
        a.displace for a in plan.actions if isinstance(a, Revert) and a.displace
    }
    vms = {vm.name: vm for name in sorted(names) for vm in load_rows(session, _VM_NAMED, {"name": name})}
    hosts = {
        h.id: h
        for host_id in sorted({v.host_id for v in vms.values()})
        for h in _HOST.execute(session, {"id": host_id})
    }

    fitting = _still_fitting(session, plan, vms, hosts)

    def unchanged(name: str | None) -> EditableRow | None:
        vm = vms.get(name or "")
        if vm is None or vm.version != view.vm_versions.get(vm.name) or vm.operation is not None:
            return None
        return vm

    work: list[Work] = []
    for action in fitting:
        vm = unchanged(action.vm)
        if vm is None:
            continue
        host = hosts[vm.host_id]
        if isinstance(action, Revert):
            owner = unchanged(action.displace) if action.displace else None
            if action.displace and owner is None:
                continue
            work += _revert(session, vm, host, owner, action, now, options)
        elif isinstance(action, PowerOff):
            work += _power_off(session, vm, host, action, now, options)
        elif isinstance(action, StartTask):
            work += _start_task(session, vm, host, action.task_id, now, settings, options)
    save_rows(session, vms.values())
    return work


# Statements run at every recorded plan, built once and run on the driver (testlab/db/prepared.py):
# each VM the plan acts on (editable rows: testlab/db/rows.py) and its host, and the current rows of
# each host it adds work to (see _still_fitting). One row or host at a time: a plan acts on one or
# two, and a list in `IN` would be expanded through SQLAlchemy at each run, which costs more.
_VM_NAMED = Prepared(select(VM.__table__).where(VM.name == bindparam("name")))
_HOST = Prepared(select(Host.__table__).where(Host.id == bindparam("id")))
_VMS_OF_HOST = Prepared(
    select(VM.name, VM.host_id, VM.domain, VM.status, VM.operation)
    .where(VM.host_id == bindparam("host"), VM.role != VMRole.DELETED)
    .order_by(VM.id)
    .with_for_update(key_share=True)
)


def _still_fitting(
    session: Session, plan: Plan, vms: Mapping[str, EditableRow], hosts: Mapping[int, Row]
) -> list[Action]:
    """The plan's actions that still fit their hosts, counted from the current rows of every VM of
    the hosts they add work to. The rows stay locked until the commit on PostgreSQL (SQLite's writer
    holds the write lock already), so what is counted cannot change before the actions are recorded.
    The lock is FOR NO KEY UPDATE, which an update of the rows waits for but a row that refers to them
    does not: FOR UPDATE also stopped the foreign key checks of an event or task written for a VM, and
    a job's cancel (its tasks locked, then an event for their VM) deadlocked with the plan."""
    adding = {vms[a.vm].host_id for a in plan.actions if not isinstance(a, PowerOff) and a.vm in vms}
    if not adding:
        return list(plan.actions)
    rows = [row for host_id in sorted(adding) for row in _VMS_OF_HOST.execute(session, {"host": host_id})]
    current = {
        row.name: VMView(
            name=row.name,
            host=hosts[row.host_id].name,
            domain=row.domain,
            status=row.status,
            busy=row.operation is not None,
        )
        for row in rows
    }
    limits = {hosts[h].name: HostLimits(**{f: getattr(hosts[h], f) for f in LIMIT_FIELDS}) for h in adding}
    return still_fitting(plan.actions, limits, current)


def _set_operation(vm: EditableRow, operation: str, seconds: float, now: datetime) -> None:
    vm.operation = operation
    vm.operation_started = now
    vm.operation_deadline = now + timedelta(seconds=seconds)


def _revert(
    session: Session,
    vm: EditableRow,
    host: Row,
    owner: EditableRow | None,
    action: Revert,
    now: datetime,
    options: EngineOptions,
) -> list[Work]:
    if vm.status not in (VMStatus.OFF, VMStatus.DIRTY, VMStatus.IDLE, VMStatus.SLEEPING):
        return []
    if owner is not None:
        if owner.status not in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.DIRTY):
            return []
        set_vm_status(session, owner, VMStatus.OFF, f"domain {owner.domain} taken over by {vm.name}", now=now)
        wipe_lifecycle(session, owner, now)
    set_vm_status(session, vm, VMStatus.REVERTING, f"revert to {vm.snapshot} ({action.reason})", now=now)
    wipe_lifecycle(session, vm, now)
    _set_operation(vm, "revert", options.revert_timeout + host.sleep_after_revert, now)
    return [RevertWork(vm_ref(vm, host.name), host.sleep_after_revert, options.revert_timeout)]


def _power_off(
    session: Session, vm: EditableRow, host: Row, action: PowerOff, now: datetime, options: EngineOptions
) -> list[Work]:
    if vm.status not in (VMStatus.DIRTY, VMStatus.IDLE, VMStatus.SLEEPING):
        return []
    if vm.status != VMStatus.DIRTY:
        set_vm_status(session, vm, VMStatus.DIRTY, f"powering off ({action.reason})", now=now)
    else:
        record_event(session, "vm", f"powering off ({action.reason})", vm=vm, now=now)
    _set_operation(vm, "poweroff", options.poweroff_timeout, now)
    return [PowerOffWork(vm_ref(vm, host.name), options.poweroff_timeout)]


def _start_task(
    session: Session,
    vm: EditableRow,
    host: Row,
    task_id: int,
    now: datetime,
    settings: Settings,
    options: EngineOptions,
) -> list[Work]:
    loaded = load_task_rows(session, task_id)
    if loaded is None:
        return []
    task, step, job = loaded
    if task.status != TaskStatus.QUEUED or vm.status != VMStatus.IDLE:
        return []
    if vm.maintenance_requested:
        return []
    if task.vm_id is None:  # a pool task takes the VM the plan chose, if it still carries the labels
        if not step.pool_labels or not selected_by(step.pool_labels, vm.labels or (), vm.role):
            return []
        task.vm_id = vm.id
    elif task.vm_id != vm.id:
        return []
    if step.clean and vm.uses:
        return []  # the plan was made before a use of the VM (an administrator's command)
    if job.cancel_requested:
        return []
    task.tries += 1
    task.command_id = f"task-{task.id}-try-{task.tries}"
    task.agent_url = vm.agent_url
    task.boot_id = vm.boot_id
    task.exit_code = task.failures = None
    task.detail = ""
    set_task_status(
        session, task, TaskStatus.RUNNING, f"started on {vm.name} (try {task.tries})", vm=vm, now=now
    )
    task.history_at_start = begin_task_use(
        session, vm, task_id=task.id, job_id=job.id, step=step.name, prepare=step.prepare, now=now
    )
    task.history_at_end = None
    set_vm_status(
        session, vm, VMStatus.RUNNING, f"running task {task.id} of job {job.id}", task=task, now=now
    )
    _set_operation(vm, "task", task.timeout + options.task_margin, now)
    task.save(session)
    roll_up_job(session, job, now=now, started=step)
    return [describe_task(session, task, vm, host.name, settings, options, step=step, job=job)]


def describe_task(
    session: Session,
    task: Task | EditableRow,
    vm: VM | EditableRow,
    host_name: str,
    settings: Settings,
    options: EngineOptions,
    *,
    step: Step | EditableRow | None = None,
    job: Job | EditableRow | None = None,
) -> TaskWork:
    """Everything an operation needs to run (or re-attach to) a task, as plain data."""
    job = job if job is not None else session.get(Job, task.job_id)
    step = step if step is not None else session.get(Step, task.step_id)
    job_dir = settings.job_dir(job.id)
    artifact_dirs: tuple = ()
    if step.depends_on_id is not None:
        dependencies = session.scalars(
            select(Task.id).where(Task.step_id == step.depends_on_id).order_by(Task.id)
        )
        artifact_dirs = tuple(job_dir / "tasks" / str(t) / "artifacts" for t in dependencies)
    started = (task.started or utcnow()).replace(tzinfo=UTC).timestamp()
    return TaskWork(
        task_id=task.id,
        job_id=job.id,
        vm=vm_ref(vm, host_name),
        command_id=task.command_id or "",
        agent_url=task.agent_url,
        boot_id=task.boot_id,
        command=step.command,
        env={
            **step.env,
            "TESTLAB_JOB": str(job.id),
            "TESTLAB_STEP": step.name,
            "TESTLAB_TASK": str(task.id),
            "TESTLAB_VM": vm.name,
            "TESTLAB_TRY": str(task.tries),
        },
        timeout=task.timeout,
        files_dir=job_dir / "files",
        files=tuple(step.files),
        artifact_dirs=artifact_dirs,
        artifacts=tuple(step.artifacts),
        reports=tuple(step.reports or ()),
        output_dir=job_dir / "tasks" / str(task.id),
        remote_dir=f"task-{task.id}",
        deadline=started + task.timeout + options.task_margin,
    )


def record_notice(session: Session, text: str) -> None:
    """Tell the administrators (a `notify` event: notifications send it on)."""
    record_event(session, "notify", text)


def record_blocked(session: Session, blocked: Mapping[str, str]) -> None:
    """Store why queued work waits, by subject (`vm win10`, `engine`), when the reasons changed; a
    reason that stays keeps its `since`, so people see how long work has waited for it."""
    wanted = dict(blocked)
    stored = dict(session.execute(select(Blocked.subject, Blocked.reason)).all())
    stale = [subject for subject, reason in stored.items() if wanted.get(subject) != reason]
    if stale:
        session.execute(delete(Blocked).where(Blocked.subject.in_(stale)))
    new = [{"subject": s, "reason": r, "since": utcnow()} for s, r in wanted.items() if stored.get(s) != r]
    if new:
        session.execute(insert(Blocked), new)
