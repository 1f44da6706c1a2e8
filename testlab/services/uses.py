"""The lifecycle records: each VM's uses since its last wipe, stored outside the machine.

The engine records a use when it starts a task on a VM and closes it when the task ends; an
administrator's `vm exec` and a host power cycle record uses outside any job. A wipe (a revert, a
reinstall, a power-off after which the next use reverts) closes the VM's current lifecycle by
stamping its rows with the wipe's time. Reading a VM's current lifecycle is one range of the
`(vm_id, wiped, id)` index: its cost follows the VM's own rows, however many other VMs have.
The pure decisions (history strings, blame, protection, reuse) live in testlab.lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from testlab.db.models import VM, VMUse, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow
from testlab.lifecycle import Lifecycle, ReusePolicy, Use, UseKind, format_history

_COLUMNS = (
    VMUse.id,
    VMUse.kind,
    VMUse.job_id,
    VMUse.step,
    VMUse.task_id,
    VMUse.actor,
    VMUse.started,
    VMUse.ended,
    VMUse.outcome,
)


# The engine's statements, built once: each task's start and end runs them, and a statement built anew
# is walked for its cache key at every run. They run on the session's connection, past the ORM:
# uses are never loaded as objects, so there is nothing of the session's to keep in step with them.
_CURRENT_USES = Prepared(
    select(*_COLUMNS).where(VMUse.vm_id == bindparam("of_vm"), VMUse.wiped.is_(None)).order_by(VMUse.id)
)
_BEGIN_TASK_USE = Prepared(
    insert(VMUse).values(
        vm_id=bindparam("of_vm"),
        kind=bindparam("use_kind"),
        job_id=bindparam("of_job"),
        step=bindparam("of_step"),
        task_id=bindparam("of_task"),
        started=bindparam("at"),
        detail="",  # given: a default filled in Python would send it through SQLAlchemy (db/prepared.py)
    )
)
_END_TASK_USE = Prepared(
    update(VMUse)
    .where(VMUse.task_id == bindparam("of_task"), VMUse.vm_id == bindparam("of_vm"), VMUse.ended.is_(None))
    .values(ended=bindparam("at"), outcome=bindparam("use_outcome"))
)
_WIPE = Prepared(
    update(VMUse)
    .where(VMUse.vm_id == bindparam("of_vm"), VMUse.wiped.is_(None))
    .values(wiped=bindparam("at"))
)


@dataclass(frozen=True, slots=True)
class UseRow:
    """A stored use as people see it: the lifecycle's `Use` with the row's detail (an exec's
    command line) for `vm history`."""

    use: Use
    detail: str


def reuse_policy(vm: VM | EditableRow) -> ReusePolicy:
    return ReusePolicy(
        wipe=vm.wipe,
        max_uses=vm.max_uses,
        wipe_after_failure=vm.wipe_after_failure,
        protect_after=vm.protect_after,
    )


def _use(row, now: datetime | None = None) -> Use:
    """A row as a `Use`, `concurrent` when it had not ended at `now` (never, without `now`)."""
    use_id, kind, job_id, step, task_id, actor, started, ended, outcome = row
    in_job = kind in UseKind.IN_JOB
    return Use(
        kind=kind,
        job=job_id if in_job else None,
        step=step if in_job else None,
        task=task_id if in_job else None,
        use_id=use_id,
        started=started,
        ended=ended,
        actor=actor,
        outcome=outcome if in_job else None,
        concurrent=now is not None and (ended is None or ended > now),
    )


def current_uses(session: Session, vm_id: int, *, now: datetime | None = None) -> list[Use]:
    """The VM's uses since its last wipe, in order; with `now`, those still running are concurrent."""
    rows = _CURRENT_USES.execute(session, {"of_vm": vm_id}).all()
    return [_use(row, now) for row in rows]


def current_lifecycle(session: Session, vm_id: int) -> list[UseRow]:
    """`current_uses` with each row's detail, for people."""
    rows = session.execute(
        select(*_COLUMNS, VMUse.detail).where(VMUse.vm_id == vm_id, VMUse.wiped.is_(None)).order_by(VMUse.id)
    ).all()
    return [UseRow(_use(row[:-1]), row[-1]) for row in rows]


def begin_task_use(
    session: Session,
    vm: VM | EditableRow,
    *,
    task_id: int,
    job_id: int,
    step: str,
    prepare: bool,
    now: datetime,
) -> str:
    """Record a task's use of the VM as it starts; returns the history string as of now."""
    kind = UseKind.PREPARE if prepare else UseKind.TASK
    _BEGIN_TASK_USE.execute(
        session,
        {"of_vm": vm.id, "use_kind": kind, "of_job": job_id, "of_step": step, "of_task": task_id, "at": now},
    )
    vm.uses = (vm.uses or 0) + 1
    return format_history(current_uses(session, vm.id, now=now), current_job=job_id)


def end_task_use(
    session: Session, vm_id: int, *, task_id: int, job_id: int, outcome: str | None, now: datetime
) -> tuple[str, list[Use]]:
    """Close a task's open use with its outcome (None: no verdict, e.g. requeued); returns the history
    string as of now and the VM's current uses (for the protection rule)."""
    _END_TASK_USE.execute(session, {"of_task": task_id, "of_vm": vm_id, "at": now, "use_outcome": outcome})
    uses = current_uses(session, vm_id, now=now)
    return format_history(uses, current_job=job_id), uses


def begin_outside_use(session: Session, vm: VM, kind: str, *, actor: str | None, detail: str = "") -> int:
    """Record an administrator's command or a power cycle on the VM; returns the use's id.

    Raising the VM's use count is a versioned write of its row: an engine plan made before this use
    (e.g. to start a `clean: true` task on the VM) is dropped and made again, and a conflict with
    the engine's own write makes the caller's transaction run again."""
    if kind not in UseKind.OUT_OF_JOB:
        raise ValueError(f"not a use outside any job: {kind!r}")
    use_id = session.execute(
        insert(VMUse)
        .values(vm_id=vm.id, kind=kind, actor=actor, detail=detail, started=utcnow())
        .returning(VMUse.id)
    ).scalar_one()
    vm.uses = (vm.uses or 0) + 1
    return use_id


def end_outside_use(session: Session, use_id: int) -> None:
    session.execute(update(VMUse).where(VMUse.id == use_id).values(ended=utcnow()))


def wipe_lifecycle(session: Session, vm: VM | EditableRow, now: datetime) -> None:
    """The VM is being wiped: its current lifecycle closes (rows of uses still running stay in it)."""
    if vm.uses:
        _WIPE.execute(session, {"of_vm": vm.id, "at": now})
    vm.uses = 0
    vm.wipe_requested = False


def lifecycles(
    session: Session, *, since: datetime | None = None, vm_ids: Iterable[int] | None = None
) -> list[Lifecycle]:
    """Every lifecycle with a use begun since `since` (all of them without), for blame: each VM's
    rows grouped by the wipe that closed them, the current ones last."""
    query = select(VMUse.vm_id, VMUse.wiped, *_COLUMNS).order_by(VMUse.vm_id, VMUse.id)
    if since is not None:
        query = query.where(VMUse.started >= since)
    if vm_ids is not None:
        query = query.where(VMUse.vm_id.in_(list(vm_ids)))
    groups: dict[tuple[int, datetime | None], list[Use]] = {}
    for row in session.execute(query):
        groups.setdefault((row[0], row[1]), []).append(_use(row[2:]))
    found = {vm_id for vm_id, _ in groups}
    names = dict(session.execute(select(VM.id, VM.name).where(VM.id.in_(found))).all()) if found else {}
    return [
        Lifecycle(vm=names.get(vm_id, str(vm_id)), uses=tuple(uses), closed=wiped)
        for (vm_id, wiped), uses in groups.items()
    ]


def uses_before(session: Session, task_id: int) -> list[Use] | None:
    """The uses of the task's VM that came before the task's (last) use in the same lifecycle,
    newest first, each marked concurrent if it was still running when the task's use ended; None
    when the rows are gone (`testlab gc`: the task's history string still tells)."""
    own = session.execute(
        select(VMUse.id, VMUse.vm_id, VMUse.wiped, VMUse.ended)
        .where(VMUse.task_id == task_id)
        .order_by(VMUse.id.desc())
        .limit(1)
    ).first()
    if own is None:
        return None
    use_id, vm_id, wiped, ended = own
    lifecycle = VMUse.wiped.is_(None) if wiped is None else VMUse.wiped == wiped
    rows = session.execute(
        select(*_COLUMNS).where(VMUse.vm_id == vm_id, lifecycle, VMUse.id < use_id).order_by(VMUse.id.desc())
    ).all()
    return [_use(row, ended or utcnow()) for row in rows]
