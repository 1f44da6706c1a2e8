"""The event history of a VM, a host or a job, newest first, a page at a time.

Pages are keyset-paginated on (time, id) through the index of the subject ((vm_id, time), (host_id,
time), (job_id, time)): the thousandth page costs what the first does. The cursor is the id of the last
event of the previous page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, not_, select
from sqlalchemy.orm import Session, aliased

from testlab.db.models import VM, Event, Host, Task
from testlab.services.views import iso_time


def event_view(event: Event, vm: str | None, host: str | None) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": iso_time(event.time),
        "kind": event.kind,
        "vm": vm,
        "host": host,
        "job": event.job_id,
        "task": event.task_id,
        "old": event.old_status,
        "new": event.new_status,
        "reason": event.reason,
        "actor": event.actor,
    }


def events_page(
    session: Session,
    *,
    vm_id: int | None = None,
    host_id: int | None = None,
    job_id: int | None = None,
    before: int | None = None,
    limit: int = 50,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """One page of the history of exactly one subject (a VM, a host or a job), newest first.

    `until` keeps only events up to that time (the VM's history before a task ended)."""
    subjects = [(Event.vm_id, vm_id), (Event.host_id, host_id), (Event.job_id, job_id)]
    chosen = [(column, value) for column, value in subjects if value is not None]
    if len(chosen) != 1:
        raise ValueError("events_page needs exactly one of vm_id, host_id, job_id")
    column, value = chosen[0]
    vm_table, host_table = aliased(VM), aliased(Host)
    query = (
        select(Event, vm_table.name, host_table.name)
        .outerjoin(vm_table, Event.vm_id == vm_table.id)
        .outerjoin(host_table, Event.host_id == host_table.id)
        .where(column == value)
        .order_by(Event.time.desc(), Event.id.desc())
        .limit(limit)
    )
    if until is not None:
        query = query.where(Event.time <= until)
    if before is not None:
        cursor_time = session.scalar(select(Event.time).where(Event.id == before))
        if cursor_time is None:
            return []
        # (time, id) < (cursor_time, before), written so the (subject, time) index bounds the scan.
        query = query.where(
            Event.time <= cursor_time, not_(and_(Event.time == cursor_time, Event.id >= before))
        )
    return [event_view(event, vm, host) for event, vm, host in session.execute(query)]


def vm_history_before_task(session: Session, task: Task, limit: int = 8) -> list[dict[str, Any]]:
    """What happened to a task's VM up to the task's end: shown next to a failure, so a VM that was
    misbehaving (errors, reverts that failed, an administrator's change) is seen at once."""
    return events_page(session, vm_id=task.vm_id, until=task.ended, limit=limit)
