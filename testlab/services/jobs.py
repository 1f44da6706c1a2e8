"""Submit, cancel and restart jobs.

A submitted job is self-contained: its definition and files are copied into the data directory, so
later edits of the originals change nothing and the job can be rerun as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Job, Step, Task, utcnow
from testlab.domain.jobfile import JobDef, TargetVM, resolve_targets
from testlab.domain.statuses import TaskStatus, VMRole
from testlab.services.errors import UserError
from testlab.services.transitions import record_event, roll_up_job, set_task_status


def _target_vms(session: Session) -> list[TargetVM]:
    return [
        TargetVM(name=name, role=role, labels=frozenset(labels or ()), enabled=role in VMRole.ENABLED)
        for name, role, labels in session.execute(select(VM.name, VM.role, VM.labels))
    ]


def _stage_files(job: JobDef, staging: Path) -> None:
    (staging / "files").mkdir(parents=True)
    shutil.copy2(job.source, staging / "job.yaml")
    for step in job.steps:
        for relative in step.files:
            destination = staging / "files" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(job.base_dir / relative, destination)


def submit_job(
    session: Session, settings: Settings, job: JobDef, *, owner: str, priority: int | None = None
) -> int:
    """Insert the job, its steps and tasks, and copy its files; all or nothing."""
    targets = resolve_targets(job, _target_vms(session))
    vm_ids = dict(session.execute(select(VM.name, VM.id)).all())
    now = utcnow()
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".submit-", dir=settings.jobs_dir))
    try:
        _stage_files(job, staging)
        row = Job(
            owner=owner,
            name=job.name,
            description=job.description,
            priority=job.priority if priority is None else priority,
            status=TaskStatus.QUEUED,
            submitted=now,
        )
        session.add(row)
        session.flush()
        step_ids: dict[str, int] = {}
        task_rows = []
        for number, step in enumerate(job.ordered_steps(), start=1):
            step_row = Step(
                job_id=row.id,
                number=number,
                name=step.name,
                depends_on_id=step_ids[step.after] if step.after else None,
                command=step.run,
                files=list(step.files),
                artifacts=list(step.artifacts),
                env=dict(step.env),
                timeout=step.timeout,
                status=TaskStatus.QUEUED,
            )
            session.add(step_row)
            session.flush()
            step_ids[step.name] = step_row.id
            task_rows += [
                {
                    "job_id": row.id,
                    "step_id": step_row.id,
                    "number": task_number,
                    "vm_id": vm_ids[vm_name],
                    "status": TaskStatus.QUEUED,
                    "timeout": step.timeout,
                    "tries": 0,
                    "detail": "",
                }
                for task_number, vm_name in enumerate(targets[step.name], start=1)
            ]
        session.execute(insert(Task), task_rows)
        record_event(
            session, "job", f"job {row.id} submitted by {owner}", job_id=row.id, new=row.status, now=now
        )
        session.flush()
        staging.rename(settings.job_dir(row.id))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return row.id


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise UserError(f"job {job_id}: no such job")
    return job


def cancel_job(session: Session, job_id: int, *, now: datetime | None = None) -> Job:
    """Mark the job canceled: queued tasks are skipped now; running ones are killed by the engine,
    which sees `cancel_requested` and ends them `canceled`."""
    job = get_job(session, job_id)
    if job.status in TaskStatus.FINAL:
        raise UserError(f"job {job_id} has already ended ({job.status})")
    now = now or utcnow()
    job.cancel_requested = True
    record_event(session, "job", f"job {job_id} cancel requested", job_id=job_id, now=now)
    queued = session.scalars(select(Task).where(Task.job_id == job_id, Task.status == TaskStatus.QUEUED))
    for task in queued:
        set_task_status(session, task, TaskStatus.SKIPPED, "job canceled", now=now)
    roll_up_job(session, job, now=now)
    return job


def restart_job(session: Session, settings: Settings, job_id: int, *, now: datetime | None = None) -> Job:
    """Run an ended job again from scratch, in place: same id, same files, fresh results."""
    job = get_job(session, job_id)
    if job.status not in TaskStatus.FINAL:
        raise UserError(f"job {job_id} is still {job.status}: cancel it first or wait for its end")
    now = now or utcnow()
    job.cancel_requested = False
    for task in session.scalars(select(Task).where(Task.job_id == job_id)):
        set_task_status(session, task, TaskStatus.QUEUED, "job restarted", now=now)
    session.execute(
        update(Task)
        .where(Task.job_id == job_id)
        .values(
            tries=0, exit_code=None, failures=None, detail="", agent_url=None, boot_id=None, command_id=None
        )
    )
    record_event(session, "job", f"job {job_id} restarted", job_id=job_id, now=now)
    roll_up_job(session, job, now=now)
    shutil.rmtree(settings.job_dir(job_id) / "tasks", ignore_errors=True)
    return job
