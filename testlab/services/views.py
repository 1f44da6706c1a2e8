"""Plain-data views of jobs, VMs and hosts: the stable JSON shapes of `--json` (the web API will
serve the same)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Blocked, Host, Job, Step, Task
from testlab.domain.jobfile import selected_by
from testlab.lifecycle import FAILING, Use, Wipe
from testlab.results import classify
from testlab.services.results import job_verdict, task_problems
from testlab.services.uses import uses_before


def iso_time(value: datetime | None) -> str | None:
    """How every view writes a time: ISO 8601, UTC, to the second."""
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


_time = iso_time


def host_view(host: Host, vm_count: int = 0) -> dict[str, Any]:
    return {
        "name": host.name,
        "backend": host.backend,
        "uri": host.uri,
        "status": "retired" if host.retired else host.status,
        "vms": vm_count,
        "limits": {
            "max_active": host.max_active,
            "max_running": host.max_running,
            "max_reverting": host.max_reverting,
            "max_reverts_while_running": host.max_reverts_while_running,
            "max_ready_when_idle": host.max_ready_when_idle,
            "sleep_after_revert": host.sleep_after_revert,
        },
    }


def list_hosts(session: Session) -> list[dict[str, Any]]:
    counts = dict(session.execute(select(VM.host_id, func.count()).group_by(VM.host_id)).all())
    return [host_view(h, counts.get(h.id, 0)) for h in session.scalars(select(Host).order_by(Host.name))]


def vm_view(vm: VM, host_name: str) -> dict[str, Any]:
    return {
        "name": vm.name,
        "host": host_name,
        "domain": vm.domain,
        "snapshot": vm.snapshot,
        "role": vm.role,
        "labels": list(vm.labels or ()),
        "status": vm.status,
        "maintenance_requested": vm.maintenance_requested,
        "errors": vm.errors,
        "operation": vm.operation,
        "operation_deadline": _time(vm.operation_deadline),
        "description": vm.description,
        "wipe": vm.wipe,  # every-task | reuse (docs/lifecycle.md)
        "uses_since_wipe": vm.uses,
        "wipe_requested": vm.wipe_requested,
    }


def list_vms(
    session: Session,
    *,
    host: str | None = None,
    status: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """VMs by name; `after` (a VM name) and `limit` page through them on the unique name index."""
    query = select(VM, Host.name).join(Host, VM.host_id == Host.id).order_by(VM.name)
    if host:
        query = query.where(Host.name == host)
    if status:
        query = query.where(VM.status == status)
    if after:
        query = query.where(VM.name > after)
    if limit:
        query = query.limit(limit)
    return [vm_view(vm, host_name) for vm, host_name in session.execute(query)]


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "priority": job.priority,
        "status": job.status,
        "submitted": _time(job.submitted),
        "started": _time(job.started),
        "ended": _time(job.ended),
    }


def list_jobs(
    session: Session,
    status: str | None = None,
    limit: int | None = None,
    *,
    owner: str | None = None,
    name: str | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Jobs newest first, each with its tasks counted by status. `before` (a job id) and `limit` page
    through them; every filter has an index that ends with the id, so a page costs the same at any
    depth of the history."""
    query = select(Job).order_by(Job.id.desc())
    if status:
        query = query.where(Job.status == status)
    if owner:
        query = query.where(Job.owner == owner)
    if name:
        query = query.where(Job.name == name)
    if before is not None:
        query = query.where(Job.id < before)
    if limit:
        query = query.limit(limit)
    jobs = [job_summary(j) for j in session.scalars(query)]
    counts = task_counts(session, [j["id"] for j in jobs])
    for job in jobs:
        job["tasks"] = counts.get(job["id"], {})
    return jobs


def task_counts(session: Session, job_ids: list[int]) -> dict[int, dict[str, int]]:
    """job id -> {task status: count}, for the jobs given (one query on the tasks' job index)."""
    counts: dict[int, dict[str, int]] = {}
    if job_ids:
        rows = session.execute(
            select(Task.job_id, Task.status, func.count())
            .where(Task.job_id.in_(job_ids))
            .group_by(Task.job_id, Task.status)
        )
        for job_id, status, count in rows:
            counts.setdefault(job_id, {})[status] = count
    return counts


def _verdict(task: Task, step: Step, problems) -> str:
    return classify(
        task.status,
        exit_code=task.exit_code,
        failures=task.failures,
        problems=problems,
        detail=task.detail,
        timeout=step.timeout,
    ).label


def _pool_waits(session: Session, steps: list[Step], tasks: list[Task]) -> dict[int, str]:
    """Why a pool step's queued tasks wait, when no VM carrying its labels can be used at all (each
    such VM blocked: offline, in maintenance...). A pool that is merely busy does not block."""
    waiting = {t.step_id for t in tasks if t.vm_id is None and t.status == "queued"}
    steps = [s for s in steps if s.id in waiting]
    if not steps:
        return {}
    vms = session.execute(select(VM.name, VM.labels, VM.role)).all()
    reasons = dict(session.execute(select(Blocked.subject, Blocked.reason)).all())
    found = {}
    for step in steps:
        labels = f"[{', '.join(step.pool_labels)}]"
        members = [
            name for name, vm_labels, role in vms if selected_by(step.pool_labels, vm_labels or (), role)
        ]
        why = [reasons.get(f"vm {name}") for name in members]
        if not members:
            found[step.id] = f"no VM carries the labels {labels} any more"
        elif all(why):
            found[step.id] = f"no VM with the labels {labels} can be used: {'; '.join(why[:3])}"
    return found


def use_view(use: Use) -> dict[str, Any]:
    """One use of a VM as the API and `vm history` show it."""
    return {
        "id": use.use_id,
        "kind": use.kind,
        "job": use.job,
        "step": use.step,
        "task": use.task,
        "actor": use.actor,
        "started": _time(use.started),
        "ended": _time(use.ended),
        "outcome": use.outcome,
        "concurrent": use.concurrent,
    }


def _reused_failures(session: Session, tasks: list[Task]) -> dict[int, list[dict[str, Any]]]:
    """For each task that failed on a reused VM, the VM's earlier uses since its last wipe, newest
    first (concurrent ones marked): what to look at before blaming the task itself."""
    failed = [t for t in tasks if t.status in FAILING and t.vm_id is not None]
    if not failed:
        return {}
    reused = set(
        session.scalars(
            select(VM.id).where(VM.id.in_({t.vm_id for t in failed}), VM.wipe == Wipe.REUSE)
        ).all()
    )
    found = {t.id: uses_before(session, t.id) for t in failed if t.vm_id in reused}
    return {task_id: [use_view(use) for use in uses] for task_id, uses in found.items() if uses is not None}


def job_view(session: Session, job: Job) -> dict[str, Any]:
    """The job with its steps and tasks; each task with its verdict (how it ended, in one line: see
    testlab/results/classify.py), the job with its test verdict against the reference runs."""
    steps = session.scalars(select(Step).where(Step.job_id == job.id).order_by(Step.number)).all()
    tasks = session.scalars(
        select(Task).where(Task.job_id == job.id).order_by(Task.step_id, Task.number)
    ).all()
    vm_ids = {t.vm_id for t in tasks if t.vm_id is not None}
    vm_names = dict(session.execute(select(VM.id, VM.name).where(VM.id.in_(vm_ids))).all()) if vm_ids else {}
    pools = _pool_waits(session, [s for s in steps if s.pool_labels], tasks)
    by_step: dict[int, list[Task]] = {}
    for task in tasks:
        by_step.setdefault(task.step_id, []).append(task)
    names = {s.id: s.name for s in steps}
    waiting = {t.vm_id for t in tasks if t.status == "queued" and t.vm_id is not None}
    blocked = (
        dict(
            session.execute(
                select(Blocked.subject, Blocked.reason).where(
                    Blocked.subject.in_(["engine", *(f"vm {vm_names.get(vm_id)}" for vm_id in waiting)])
                )
            ).all()
        )
        if waiting
        else {}
    )
    problems = task_problems(session, job.id)
    reused = _reused_failures(session, tasks)
    verdict = job_verdict(session, job)
    view = job_summary(job)
    view["cancel_requested"] = job.cancel_requested
    view["reference"] = job.reference
    view["results"] = {
        "failures": verdict.failures,
        "new": verdict.new,
        "known": verdict.known,
        "flaky": verdict.flaky,
        "report_problems": verdict.problems,
        "verdict": verdict.text,
    }
    view["steps"] = [
        {
            "number": step.number,
            "name": step.name,
            "after": names.get(step.depends_on_id) if step.depends_on_id else None,
            "status": step.status,
            "labels": list(step.pool_labels or ()) or None,  # a pool step: its tasks run on any such VM
            "prepare": step.prepare,
            "clean": step.clean,
            "command": step.command,
            "timeout": step.timeout,
            "started": _time(step.started),
            "ended": _time(step.ended),
            "tasks": [
                {
                    "id": t.id,
                    "number": t.number,
                    "vm": vm_names.get(t.vm_id),
                    "status": t.status,
                    "tries": t.tries,
                    "exit_code": t.exit_code,
                    "failures": t.failures,
                    "detail": t.detail,
                    "result": _verdict(t, step, problems.get(t.id, ())),
                    # Why a queued task cannot run as things stand (the engine's scheduler says).
                    "blocked": (
                        (
                            pools.get(step.id)
                            if t.vm_id is None
                            else blocked.get(f"vm {vm_names.get(t.vm_id)}")
                        )
                        or blocked.get("engine")
                        if t.status == "queued"
                        else None
                    ),
                    "started": _time(t.started),
                    "ended": _time(t.ended),
                    # The VM's uses since its last wipe, when the task ended (or started, while it runs).
                    "history": t.history_at_end or t.history_at_start,
                    # A failure on a reused VM: who used the VM before it since its last wipe.
                    "used_before": reused.get(t.id),
                }
                for t in by_step.get(step.id, [])
            ],
        }
        for step in steps
    ]
    return view
