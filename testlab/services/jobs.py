"""Submit, cancel and restart jobs.

A submitted job is self-contained: its definition and files are copied into the data directory, so
later edits of the originals change nothing and the job can be rerun as it was.

Files follow the commit: a job's files are staged in `jobs/.staging/` (locked while the submission is
in progress, marked with the job's id once it is known) and moved to `jobs/<id>` only after the rows
are committed. A submission killed at any point leaves either nothing or a staged folder that
`recover_staged_jobs` (run by the engine at start and by every submission) finishes or removes.
Job ids are never reused, so a folder can never be mistaken for another job's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Job, Step, Task, Webhook, utcnow
from testlab.db.session import after_commit, on_rollback
from testlab.domain.errors import DefinitionError
from testlab.domain.jobfile import JobDef, TargetVM, resolve_targets
from testlab.domain.statuses import TaskStatus, VMRole
from testlab.services.errors import NotFound, UserError
from testlab.services.results import clear_task_results
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


JOB_ID_MARK = ".job-id"


def _staging_dir(settings: Settings) -> Path:
    return settings.jobs_dir / ".staging"


def _lock(path: Path) -> int:
    """Hold an exclusive lock on a staged folder: it tells clean-ups the submission is in progress."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def submit_job(
    session: Session, settings: Settings, job: JobDef, *, owner: str, priority: int | None = None
) -> int:
    """Insert the job, its steps and tasks, and stage its files; the files appear under the job's id
    once the caller's transaction commits (all or nothing)."""
    # The copy comes first, before the transaction's first statement: on SQLite that statement takes
    # the write lock, which must not wait for a large file to be copied.
    _staging_dir(settings).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="submit-", dir=_staging_dir(settings)))
    lock = _lock(staging)

    def discard() -> None:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)

    try:
        _stage_files(job, staging)
        recover_staged_jobs(session, settings)
        targets = resolve_targets(job, _target_vms(session))
        _check_webhooks(session, job)
        vm_ids = dict(session.execute(select(VM.name, VM.id)).all())
        job_id = _insert(session, job, targets, vm_ids, owner=owner, priority=priority, now=utcnow())
        (staging / JOB_ID_MARK).write_text(str(job_id))
    except BaseException:
        discard()
        raise

    def publish() -> None:
        try:
            os.rename(staging, settings.job_dir(job_id))
            (settings.job_dir(job_id) / JOB_ID_MARK).unlink(missing_ok=True)
        finally:
            os.close(lock)

    after_commit(session, publish)
    on_rollback(session, discard)
    return job_id


def _check_webhooks(session: Session, job: JobDef) -> None:
    """The webhooks a job file names must exist: a typo would otherwise silence its notification."""
    if job.notify is None or not job.notify.webhooks:
        return
    known = set(session.scalars(select(Webhook.name).where(Webhook.name.in_(job.notify.webhooks))))
    for position, (name, line) in enumerate(zip(job.notify.webhooks, job.notify.webhook_lines, strict=False)):
        if name not in known:
            raise DefinitionError(
                f"no webhook named {name!r}",
                source=str(job.source),
                line=line,
                field=f"notify.webhooks[{position}]",
            )


def _insert(
    session: Session,
    job: JobDef,
    targets: dict[str, tuple[str | None, ...]],
    vm_ids: dict[str, int],
    *,
    owner: str,
    priority: int | None,
    now: datetime,
) -> int:
    row = Job(
        owner=owner,
        name=job.name,
        description=job.description,
        priority=job.priority if priority is None else priority,
        status=TaskStatus.QUEUED,
        submitted=now,
        reference=job.reference,
        notify=job.notify.as_dict() if job.notify is not None else {},
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
            reports=list(step.reports),
            pool_labels=list(step.labels) if step.count is not None else [],
            env=dict(step.env),
            timeout=step.timeout,
            prepare=step.prepare,
            clean=step.clean,
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
                "vm_id": vm_ids[vm_name] if vm_name is not None else None,
                "status": TaskStatus.QUEUED,
                "timeout": step.timeout,
                "tries": 0,
                "detail": "",
                "version": 1,
            }
            for task_number, vm_name in enumerate(targets[step.name], start=1)
        ]
    session.execute(insert(Task), task_rows)
    record_event(session, "job", f"job {row.id} submitted by {owner}", job_id=row.id, new=row.status, now=now)
    session.flush()
    return row.id


def recover_staged_jobs(session: Session, settings: Settings) -> list[str]:
    """Finish or remove submissions that were cut short: a staged folder nobody holds is moved into
    place if its job was committed, else deleted. Returns what it did, one line per folder."""
    root = _staging_dir(settings)
    done: list[str] = []
    if not root.is_dir():
        return done
    for staged in sorted(root.iterdir()):
        try:
            fd = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a submission in progress
            with contextlib.suppress(OSError, ValueError):
                job_id = int((staged / JOB_ID_MARK).read_text())
                if session.get(Job, job_id) is not None and not settings.job_dir(job_id).exists():
                    os.rename(staged, settings.job_dir(job_id))
                    (settings.job_dir(job_id) / JOB_ID_MARK).unlink(missing_ok=True)
                    done.append(f"job {job_id}: files moved into place")
                    continue
            shutil.rmtree(staged, ignore_errors=True)
            done.append(f"{staged.name}: abandoned submission removed")
        finally:
            os.close(fd)
    return done


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id}: no such job")
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
        clear_task_results(session, task.id)
        set_task_status(session, task, TaskStatus.QUEUED, "job restarted", now=now)
        task.tries = 0
        task.exit_code = task.failures = None
        task.detail = ""
        task.agent_url = task.boot_id = task.command_id = None
    record_event(session, "job", f"job {job_id} restarted", job_id=job_id, now=now)
    roll_up_job(session, job, now=now)
    results = settings.job_dir(job_id) / "tasks"
    after_commit(session, lambda: shutil.rmtree(results, ignore_errors=True))
    return job
