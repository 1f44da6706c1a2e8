"""The one place where VM, task, step and job statuses change; each change is recorded as an event.

The event history is what the activity page, the statistics and the engine's own tests read, so no
code may assign `.status` anywhere else. Each change is a conditional write: the rows carry a version
(testlab/db/session.py), so a change based on a stale read is refused at the commit, never lost.
The functions take ORM objects or, on the engine's hot paths, editable rows (testlab/db/rows.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Event, Host, Job, Step, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow, load_rows, save_rows
from testlab.domain.rollup import rollup, timestamps
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.services.notifications import enqueue_job_end, enqueue_notice


def record_event(
    session: Session,
    kind: str,
    reason: str,
    *,
    vm: VM | EditableRow | None = None,
    task: Task | EditableRow | None = None,
    job_id: int | None = None,
    host_id: int | None = None,
    old: str | None = None,
    new: str | None = None,
    now: datetime | None = None,
) -> None:
    """Write the event at once, as a plain insert: events are only ever added, and an ORM object for
    each (loaded back, tracked until the flush) cost a busy engine more than the rest of a status
    change."""
    row = {
        "time": now or utcnow(),
        "kind": kind,
        "vm_id": vm.id if vm is not None else None,
        "host_id": host_id if host_id is not None else (vm.host_id if vm is not None else None),
        "task_id": task.id if task is not None else None,
        "job_id": job_id if job_id is not None else (task.job_id if task is not None else None),
        "old_status": old,
        "new_status": new,
        "reason": reason,
        "actor": session.info.get("actor"),
    }
    batch = session.info.get(_BATCH)
    if batch is None:
        _INSERT_EVENT.execute(session, row)
    else:
        batch.append(row)
    if kind == "notify":
        enqueue_notice(session, Event(**row))


@contextmanager
def batched_events(session: Session) -> Iterator[None]:
    """Within the block, events are written together at its end, in one statement: a task's start
    or end changes a task, its VM, its step and its job, an event each. Only for blocks that neither
    read events nor delete what they name."""
    if _BATCH in session.info:  # an outer block writes them
        yield
        return
    batch: list[dict] = []
    session.info[_BATCH] = batch
    try:
        yield
    finally:
        del session.info[_BATCH]
    if batch:
        _INSERT_EVENT.execute_many(session, batch)


_BATCH = "event_batch"
_INSERT_EVENT = Prepared(insert(Event.__table__))


def set_vm_status(
    session: Session,
    vm: VM | EditableRow,
    new: str,
    reason: str,
    *,
    task: Task | EditableRow | None = None,
    now: datetime | None = None,
) -> bool:
    """Change a VM's status and record it; returns False (and records nothing) if it did not change.

    The row changes before its event is written: an event's number is taken when it is written, so
    an ORM row's change (written at the session's flush) is flushed first. A change that waits for another
    writer's lock on the row (an administrator's, while the engine records a plan for the VM's host)
    is then numbered after that writer's events, and the history read in order of its numbers is the
    order the rows changed in. The engine's rows (EditableRow) are locked before they change."""
    if vm.status == new:
        return False
    now = now or utcnow()
    old = vm.status
    vm.status = new
    vm.status_changed = now
    if isinstance(vm, VM):
        session.flush()
    record_event(session, "vm", reason, vm=vm, task=task, old=old, new=new, now=now)
    return True


def clear_operation(vm: VM | EditableRow) -> None:
    vm.operation = vm.operation_started = vm.operation_deadline = None


def end_operation(
    session: Session,
    vm: VM | EditableRow,
    status: str,
    reason: str,
    *,
    task: Task | EditableRow | None = None,
) -> None:
    """End the VM's operation in `status`; a pending maintenance request takes effect now instead."""
    clear_operation(vm)
    if vm.maintenance_requested:
        vm.maintenance_requested = vm.abort_requested = False
        status, reason = VMStatus.MAINTENANCE, f"{reason}; maintenance as requested"
    set_vm_status(session, vm, status, reason, task=task)


def set_host_status(session: Session, host: Host, new: str, reason: str) -> bool:
    """Change a host's status (up/down) and record it; returns False if it did not change."""
    if host.status == new:
        return False
    record_event(session, "host", reason, host_id=host.id, old=host.status, new=new)
    host.status = new
    return True


def set_task_status(
    session: Session,
    task: Task | EditableRow,
    new: str,
    reason: str,
    *,
    vm: VM | EditableRow | None = None,
    now: datetime | None = None,
) -> bool:
    """Change a task's status, keep its timestamps coherent, and record it. The caller rolls up.
    An editable row of a task has no relationships: its VM, if it has one, comes as `vm`."""
    if task.status == new:
        return False
    now = now or utcnow()
    if vm is None and not isinstance(task, EditableRow):
        vm = task.vm
    record_event(session, "task", reason, vm=vm, task=task, old=task.status, new=new, now=now)
    task.status = new
    if new == TaskStatus.QUEUED:
        task.started = task.ended = None
    elif new == TaskStatus.RUNNING:
        task.started, task.ended = now, None
    elif task.ended is None:
        task.ended = now
    return True


def roll_up_job(
    session: Session,
    job: Job | EditableRow,
    *,
    now: datetime | None = None,
    started: EditableRow | None = None,
) -> None:
    """Recompute the job's steps and the job itself from their tasks (the only roll-up caller).
    A job given as an editable row has its steps read and written as editable rows too; the tasks
    changed as editable rows must be saved before.

    `started`: the only change is that a task of this step (an editable row) started. A parent with a
    running child is running whatever its other children (`rollup`), so the step and the job are
    rolled up from that alone, without reading their other tasks and steps: the engine does this for
    every task it starts."""
    now = now or utcnow()
    if started is not None and isinstance(job, EditableRow):
        step_status = rollup((TaskStatus.RUNNING,), cancel_requested=job.cancel_requested)
        _apply_rollup(session, started, "step", step_status, job.id, now)
        _apply_rollup(
            session, job, "job", rollup((step_status,), cancel_requested=job.cancel_requested), job.id, now
        )
        save_rows(session, (started, job))
        return
    by_step: dict[int, list[str]] = {}
    for step_id, status in _task_statuses(session, job.id):
        by_step.setdefault(step_id, []).append(status)
    as_rows = isinstance(job, EditableRow)
    if as_rows:
        steps = load_rows(session, _STEP_ROWS_OF_JOB, {"of_job": job.id})
    else:
        with session.no_autoflush:  # the steps changed in this transaction are the session's own objects
            steps = session.scalars(_STEPS_OF_JOB, {"of_job": job.id}).all()
    ended_badly: dict[int, str] = {}
    for step in steps:  # in dependency order: a dependency is always rolled up before its dependents
        if step.depends_on_id in ended_badly:
            by_step[step.id] = _skip_queued(session, step, ended_badly[step.depends_on_id], now)
        _apply_rollup(
            session,
            step,
            "step",
            rollup(by_step.get(step.id, ()), cancel_requested=job.cancel_requested),
            job.id,
            now,
        )
        if step.status in TaskStatus.FINAL and step.status not in TaskStatus.SUCCESS:
            ended_badly[step.id] = f"step {step.name} ended {step.status}"
    _apply_rollup(
        session,
        job,
        "job",
        rollup((s.status for s in steps), cancel_requested=job.cancel_requested),
        job.id,
        now,
    )
    if as_rows:
        save_rows(session, [*steps, job])


# Built once: every task's start and end rolls its job up, and a statement built anew is walked for
# its cache key at every run.
_TASK_STATUSES = Prepared(
    select(Task.id, Task.step_id, Task.status).where(Task.job_id == bindparam("of_job"))
)
_STEPS_OF_JOB = select(Step).where(Step.job_id == bindparam("of_job")).order_by(Step.number)
_STEP_ROWS_OF_JOB = Prepared(
    select(Step.__table__).where(Step.job_id == bindparam("of_job")).order_by(Step.number)
)


def _task_statuses(session: Session, job_id: int) -> list[tuple[int, str]]:
    """Each task's (step, status) as this transaction sees it. The rows are read on the connection,
    without flushing the transaction's changes first; the tasks it changed give their statuses
    themselves. A task's start or end then writes its rows once, at the commit, instead of once per
    read in between."""
    if any(isinstance(obj, (Task, Step)) for obj in (*session.new, *session.deleted)):
        session.flush()  # tasks or steps added or removed: the rows are the simplest truth
    rows = _TASK_STATUSES.execute(session, {"of_job": job_id}).all()
    changed = {obj.id: obj for obj in session.dirty if isinstance(obj, Task) and obj.job_id == job_id}
    return [
        (step_id, changed[task_id].status if task_id in changed else status)
        for task_id, step_id, status in rows
    ]


def _skip_queued(session: Session, step: Step | EditableRow, reason: str, now: datetime) -> list[str]:
    """A step whose dependency did not complete cannot run: its queued tasks are skipped."""
    statuses = []
    for task in session.scalars(select(Task).where(Task.step_id == step.id)):
        if task.status == TaskStatus.QUEUED:
            set_task_status(session, task, TaskStatus.SKIPPED, reason, now=now)
        statuses.append(task.status)
    return statuses


def _apply_rollup(
    session: Session, parent: Step | Job | EditableRow, kind: str, new: str, job_id: int, now: datetime
) -> None:
    changed = parent.status != new
    if changed:
        record_event(session, kind, f"{kind} {new}", job_id=job_id, old=parent.status, new=new, now=now)
        parent.status = new
    parent.started, parent.ended = timestamps(new, started=parent.started, ended=parent.ended, now=now)
    if changed and kind == "job" and new in TaskStatus.FINAL:
        enqueue_job_end(session, parent)
