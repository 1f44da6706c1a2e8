"""`testlab sim export-workload`: a workload fitted from what a real lab did.

It reads only the history every engine keeps: jobs (name, priority, submitted), tasks (started,
ended, status) and the VM status events. Jobs with the same name become one template, whose job
file is the copy kept at submission; arrivals are a Poisson rate over the observed window (or, with
`replay`, the very submission times); each step's run time is fitted from its tasks, its failure
rate counted; the revert time (revert and boot, up to `sleeping` or `idle`) is fitted from the
VM events, lab-wide, with a per-VM entry where a VM differs clearly from the rest.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Event, Job, Step, Task
from testlab.domain.durations import format_duration
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.services.errors import UserError
from testlab.sim.distributions import fit

_RAN = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMEOUT)
_OWN_VM_MIN_SAMPLES = 3
_OWN_VM_DIFFERENCE = 0.2  # a VM gets its own revert time when its mean differs this much
_REACTION_MAX = 2.0  # seconds: longer gaps between two operations are waits for capacity
_REACTION_MIN_SAMPLES = 3


def export_workload(
    session: Session,
    settings: Settings,
    output: Path,
    *,
    since: float | None = None,
    replay: bool = False,
    seed: int = 1,
) -> Path:
    """Write OUTPUT/workload.yaml and OUTPUT/jobs/*/job.yaml; returns the workload file's path.

    UserError when the history holds no job to learn from."""
    query = select(Job).order_by(Job.submitted, Job.id)
    if since is not None:
        newest = session.scalar(select(Job.submitted).order_by(Job.submitted.desc()).limit(1))
        if newest is not None:
            query = query.where(Job.submitted >= newest - timedelta(seconds=since))
    jobs = [job for job in session.scalars(query) if settings.job_dir(job.id).joinpath("job.yaml").is_file()]
    if not jobs:
        raise UserError("no job in the history to derive a workload from")
    start = jobs[0].submitted
    by_name: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_name[job.name].append(job)

    output.mkdir(parents=True, exist_ok=True)
    span = max((jobs[-1].submitted - start).total_seconds(), 0.0)
    templates = []
    used: set[str] = set()
    for name, group in by_name.items():
        slug = _slug(name, used)
        job_dir = output / "jobs" / slug
        _copy_job(settings.job_dir(group[-1].id), job_dir)
        templates.append(
            {
                "job": f"jobs/{slug}/job.yaml",
                "name": name,
                "arrivals": _arrivals(group, start, span, replay),
                "priority": group[-1].priority,
                "steps": _step_times(session, group),
            }
        )
    reverts, per_vm = _revert_times(session)
    workload: dict[str, Any] = {
        "seed": seed,
        "duration": format_duration(max(round(span) + 1, 1)),
        "revert": fit(reverts).to_yaml() if reverts else "90s",
    }
    poweroffs = _poweroff_times(session)
    if poweroffs:
        workload["poweroff"] = fit(poweroffs).to_yaml()
    if per_vm:
        workload["vms"] = {vm: {"revert": fit(values).to_yaml()} for vm, values in sorted(per_vm.items())}
    latency = _latency(session)
    if latency is not None:
        workload["engine"] = {"latency": format_duration(float(f"{latency:.2g}"))}
    workload["templates"] = templates
    path = output / "workload.yaml"
    text = yaml.safe_dump(workload, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
    path.write_text(
        f"# Derived from {len(jobs)} job(s) of the lab's history by testlab sim export-workload.\n{text}"
    )
    return path


def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "job"
    slug, n = base, 1
    while slug in used:
        n += 1
        slug = f"{base}-{n}"
    used.add(slug)
    return slug


def _copy_job(source: Path, destination: Path) -> None:
    """The job file as submitted, with its files where its `files:` entries expect them."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    shutil.copy2(source / "job.yaml", destination / "job.yaml")
    files = source / "files"
    if files.is_dir():
        shutil.copytree(files, destination, dirs_exist_ok=True)


def _arrivals(group: list[Job], start: datetime, span: float, replay: bool) -> dict[str, Any]:
    offsets = [(job.submitted - start).total_seconds() for job in group]
    if replay or span <= 0 or len(group) < 2:
        return {"at": [format_duration(round(t, 1)) for t in offsets]}
    per_hour = len(group) / span * 3600
    return {"rate": f"{per_hour:.4g}/h"}


def _step_times(session: Session, group: list[Job]) -> dict[str, Any]:
    rows = session.execute(
        select(Step.name, Task.status, Task.started, Task.ended)
        .join(Step, Task.step_id == Step.id)
        .where(Task.job_id.in_([job.id for job in group]))
    ).all()
    names = list(dict.fromkeys(row[0] for row in rows))
    result: dict[str, Any] = {}
    for name in names:
        times = [
            (ended - started).total_seconds()
            for step, status, started, ended in rows
            if step == name and status in _RAN and started is not None and ended is not None
        ]
        statuses = [status for step, status, _, _ in rows if step == name and status in _RAN]
        entry = fit(times).to_yaml() if times else "1m"
        failed = sum(1 for status in statuses if status == TaskStatus.FAILED)
        if failed:
            entry = entry if isinstance(entry, dict) else {"mean": entry}
            entry["fail"] = round(failed / len(statuses), 4)
        result[name] = entry
    return result


def _vm_events(session: Session) -> dict[str, list[tuple[datetime, str | None, str | None]]]:
    names = dict(session.execute(select(VM.id, VM.name)).all())
    events: dict[str, list[tuple[datetime, str | None, str | None]]] = defaultdict(list)
    rows = session.execute(
        select(Event.vm_id, Event.time, Event.old_status, Event.new_status)
        .where(Event.kind == "vm", Event.vm_id.is_not(None))
        .order_by(Event.id)
    )
    for vm_id, time, old, new in rows:
        events[names[vm_id]].append((time, old, new))
    return events


def _revert_times(session: Session) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds from `reverting` to `sleeping` or `idle` (the settle time is the host's own setting)."""
    per_vm: dict[str, list[float]] = defaultdict(list)
    for vm, events in _vm_events(session).items():
        began = None
        for time, _, new in events:
            if new == VMStatus.REVERTING:
                began = time
            elif began is not None and new is not None:
                if new in (VMStatus.SLEEPING, VMStatus.IDLE):
                    per_vm[vm].append((time - began).total_seconds())
                began = None
    everything = [t for values in per_vm.values() for t in values]
    if not everything:
        return [], {}
    mean = sum(everything) / len(everything)
    own = {
        vm: values
        for vm, values in per_vm.items()
        if len(values) >= _OWN_VM_MIN_SAMPLES
        and abs(sum(values) / len(values) - mean) > _OWN_VM_DIFFERENCE * mean
    }
    return everything, own


def _latency(session: Session) -> float | None:
    """How long the engine takes to act on a change: the median gap between a VM becoming idle and
    a task starting on it, or a task ending and the VM's next revert, counting only short gaps
    (longer ones were waits for capacity, not the engine's reaction)."""
    follows = {(VMStatus.IDLE, VMStatus.RUNNING), (VMStatus.DIRTY, VMStatus.REVERTING)}
    gaps = []
    for events in _vm_events(session).values():
        for (before, _, entered), (time, old, new) in zip(events, events[1:], strict=False):
            if entered == old and (old, new) in follows:
                gap = (time - before).total_seconds()
                if gap < _REACTION_MAX:
                    gaps.append(gap)
    if len(gaps) < _REACTION_MIN_SAMPLES:
        return None
    gaps.sort()
    return gaps[len(gaps) // 2]


def _poweroff_times(session: Session) -> list[float]:
    """Seconds from the last event before a dirty VM went `off` (the power-off's start) to `off`."""
    times = []
    for events in _vm_events(session).values():
        for (before, _, _), (time, old, new) in zip(events, events[1:], strict=False):
            if old == VMStatus.DIRTY and new == VMStatus.OFF:
                times.append((time - before).total_seconds())
    return times
