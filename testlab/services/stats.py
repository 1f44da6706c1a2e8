"""Statistics and the activity timeline, read from the tasks and the event history of a time window.

Everything is derived from what the engine records anyway (task timestamps, VM status events), so
nothing extra is written while the lab works. The window is read through the time indexes
(`ix_tasks_ended`, `ix_events_time`) and capped in rows, so a page over the last day costs the same
in a lab with a million old tasks as in a new one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from testlab.db.models import VM, Event, Host, Job, Step, Task, utcnow
from testlab.domain.statuses import VMStatus
from testlab.services.views import iso_time

MAX_TASK_ROWS = 50_000  # the most recent tasks of the window that statistics read
MAX_EVENT_ROWS = 200_000  # VM status events of the window that statistics and the timeline read
# How the engine words a VM's infrastructure error (testlab/engine/outcomes.py, vm_error).
_VM_ERROR = re.compile(r"\(error \d+(: offline)?\)$")


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """count, p50, p90, max of a list of seconds (None when empty)."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"count": len(ordered), "p50": at(0.5), "p90": at(0.9), "max": round(ordered[-1], 3)}


@dataclass
class Segment:
    """A stretch of time a VM spent in one status (the task it ran, when running)."""

    start: datetime
    end: datetime
    status: str
    task: int | None = None
    job: int | None = None
    reason: str = ""

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def view(self) -> dict[str, Any]:
        return {
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "status": self.status,
            "task": self.task,
            "job": self.job,
            "reason": self.reason,
        }


@dataclass
class VMLane:
    name: str
    host: str
    segments: list[Segment] = field(default_factory=list)


def _lanes(
    session: Session, since: datetime, now: datetime, host_names: list[str] | None = None
) -> list[VMLane]:
    """Each VM's status over [since, now], from its status events (the status before the window is
    the first event's old status; a VM without events kept its current status)."""
    query = (
        select(VM.id, VM.name, VM.status, Host.name)
        .join(Host, VM.host_id == Host.id)
        .order_by(Host.name, VM.name)
    )
    if host_names is not None:
        query = query.where(Host.name.in_(host_names))
    vms = {vm_id: (name, status, host) for vm_id, name, status, host in session.execute(query)}
    if not vms:
        return []
    events = session.execute(
        select(
            Event.vm_id,
            Event.time,
            Event.old_status,
            Event.new_status,
            Event.task_id,
            Event.job_id,
            Event.reason,
        )
        .where(
            Event.time >= since,
            Event.kind == "vm",
            Event.new_status.is_not(None),
            Event.vm_id.in_(list(vms)),
        )
        .order_by(Event.time, Event.id)
        .limit(MAX_EVENT_ROWS)
    ).all()
    by_vm: dict[int, list] = defaultdict(list)
    for row in events:
        by_vm[row.vm_id].append(row)
    lanes = []
    for vm_id, (name, current, host) in vms.items():
        lane = VMLane(name, host)
        rows = by_vm.get(vm_id, [])
        status = rows[0].old_status if rows and rows[0].old_status else current
        start, task, job, reason = since, None, None, ""
        for row in rows:
            if row.time > start:
                lane.segments.append(Segment(start, row.time, status, task, job, reason))
            start, status, reason = max(row.time, since), row.new_status, row.reason
            task, job = (row.task_id, row.job_id) if status == VMStatus.RUNNING else (None, None)
        lane.segments.append(Segment(start, now, status, task, job, reason))
        lanes.append(lane)
    return lanes


def activity(session: Session, *, hours: float, hosts: list[str] | None = None) -> dict[str, Any]:
    """The activity timeline: for each VM (of `hosts`, or all), its status segments over the last
    `hours`, and the marks that explain them: engine starts, database outages, host operations."""
    now = utcnow()
    since = now - timedelta(hours=hours)
    lanes = _lanes(session, since, now, hosts)
    marks_query = (
        select(Event.time, Event.kind, Event.reason, Host.name)
        .outerjoin(Host, Event.host_id == Host.id)
        .where(Event.time >= since, Event.kind.in_(["engine", "host"]))
        .order_by(Event.time)
        .limit(1000)
    )
    marks = [
        {"time": iso_time(time), "kind": kind, "reason": reason, "host": host}
        for time, kind, reason, host in session.execute(marks_query)
        if hosts is None or kind == "engine" or host in hosts
    ]
    return {
        "since": iso_time(since),
        "until": iso_time(now),
        "hours": hours,
        "vms": [
            {"vm": lane.name, "host": lane.host, "segments": [s.view() for s in lane.segments]}
            for lane in lanes
        ],
        "marks": marks,
    }


def statistics(session: Session, *, hours: float, buckets: int = 24) -> dict[str, Any]:
    """Queue wait, task duration and revert time percentiles, busy share per VM and host, and
    infrastructure errors per VM in `buckets` slices of the window."""
    now = utcnow()
    since = now - timedelta(hours=hours)
    dependency = aliased(Step)
    rows = session.execute(
        select(Task.started, Task.ended, Task.status, Job.submitted, dependency.ended)
        .join(Job, Task.job_id == Job.id)
        .join(Step, Task.step_id == Step.id)
        .outerjoin(dependency, Step.depends_on_id == dependency.id)
        .where(Task.ended >= since)
        .order_by(Task.ended.desc())
        .limit(MAX_TASK_ROWS)
    ).all()
    waits, durations = [], []
    by_status: dict[str, int] = defaultdict(int)
    for started, ended, status, submitted, after in rows:
        by_status[status] += 1
        if started is None:
            continue
        durations.append((ended - started).total_seconds())
        ready = max(submitted, after) if after is not None else submitted
        waits.append(max(0.0, (started - ready).total_seconds()))

    lanes = _lanes(session, since, now)
    window = max(1.0, (now - since).total_seconds())
    reverts: list[float] = []
    vm_busy = []
    host_running: dict[str, float] = defaultdict(float)
    for lane in lanes:
        running = sum(s.seconds for s in lane.segments if s.status == VMStatus.RUNNING)
        reverts += [
            s.seconds
            for s in lane.segments
            if s.status == VMStatus.REVERTING and s.end < now and s.start > since
        ]
        vm_busy.append({"vm": lane.name, "host": lane.host, "busy": round(running / window, 4)})
        host_running[lane.host] += running
    slots = dict(session.execute(select(Host.name, Host.max_running)).all())
    host_busy = [
        {"host": host, "busy": round(seconds / (window * max(1, slots.get(host) or 1)), 4)}
        for host, seconds in sorted(host_running.items())
    ]

    step = window / max(1, buckets)
    errors: dict[str, list[int]] = {}
    error_rows = session.execute(
        select(Event.time, Event.reason, VM.name)
        .join(VM, Event.vm_id == VM.id)
        .where(Event.time >= since, Event.kind == "vm", Event.new_status.is_not(None))
        .limit(MAX_EVENT_ROWS)
    )
    for time, reason, vm_name in error_rows:
        if _VM_ERROR.search(reason or ""):
            slot = min(buckets - 1, int((time - since).total_seconds() // step))
            errors.setdefault(vm_name, [0] * buckets)[slot] += 1
    return {
        "since": iso_time(since),
        "until": iso_time(now),
        "hours": hours,
        "tasks": dict(sorted(by_status.items())),
        "queue_wait": percentiles(waits),
        "task_duration": percentiles(durations),
        "revert": percentiles(reverts),
        "busy": {"vms": vm_busy, "hosts": host_busy},
        "infra_errors": {
            "buckets": [iso_time(since + timedelta(seconds=step * i)) for i in range(buckets)],
            "vms": dict(sorted(errors.items())),
        },
    }
