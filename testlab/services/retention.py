"""Retention: old jobs' rows and files go, a small batch per transaction, so the engine (which writes
the same tables) never waits on a long clean-up. Reference jobs stay (later jobs are compared with
them), and so does anything not yet ended. Each job's files are removed after the commit that
removed its rows."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import (
    Delivery,
    Event,
    Job,
    ReportProblemRow,
    Step,
    Task,
    TestCaseResult,
    VMUse,
    utcnow,
)
from testlab.db.session import after_commit, run_transaction
from testlab.domain.statuses import TaskStatus

BATCH = 100  # jobs per transaction
USE_BATCH = 5_000  # lifecycle rows per transaction


@dataclass
class Collected:
    jobs: int = 0
    tasks: int = 0
    events: int = 0
    file_bytes: int = 0
    lines: list[str] = field(default_factory=list)


def _size(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _batch(
    session: Session, settings: Settings, cutoff, after: int, dry_run: bool, totals: Collected
) -> int | None:
    jobs = session.execute(
        select(Job.id, Job.name, Job.ended)
        .where(
            Job.id > after,
            Job.ended < cutoff,
            Job.status.in_(TaskStatus.FINAL),
            Job.reference.is_(False),
        )
        .order_by(Job.id)
        .limit(BATCH)
    ).all()
    if not jobs:
        return None
    ids = [job_id for job_id, _, _ in jobs]
    task_ids = list(session.scalars(select(Task.id).where(Task.job_id.in_(ids))))
    events = session.scalar(
        select(func.count()).select_from(Event).where(Event.job_id.in_(ids) | Event.task_id.in_(task_ids))
    )
    verb = "would remove" if dry_run else "removed"
    for job_id, name, ended in jobs:
        size = _size(settings.job_dir(job_id))
        totals.file_bytes += size
        totals.lines.append(
            f"job {job_id} ({name}, ended {ended:%Y-%m-%d}): {verb}, {size / (1 << 20):.1f} MiB of files"
        )
    totals.jobs += len(ids)
    totals.tasks += len(task_ids)
    totals.events += events or 0
    if not dry_run:
        session.execute(delete(Delivery).where(Delivery.job_id.in_(ids)))
        session.execute(delete(Event).where(Event.job_id.in_(ids) | Event.task_id.in_(task_ids)))
        session.execute(delete(TestCaseResult).where(TestCaseResult.task_id.in_(task_ids)))
        session.execute(delete(ReportProblemRow).where(ReportProblemRow.task_id.in_(task_ids)))
        session.execute(delete(Task).where(Task.job_id.in_(ids)))
        session.execute(update(Step).where(Step.job_id.in_(ids)).values(depends_on_id=None))
        session.execute(delete(Step).where(Step.job_id.in_(ids)))
        session.execute(delete(Job).where(Job.id.in_(ids)))
        for job_id in ids:
            after_commit(
                session, lambda path=settings.job_dir(job_id): shutil.rmtree(path, ignore_errors=True)
            )
    return ids[-1]


def collect(settings: Settings, older_than: timedelta, *, dry_run: bool, actor: str) -> Iterator[str]:
    """Remove (or, with `dry_run`, list) the jobs that ended more than `older_than` ago; yields one line
    per job, then a total."""
    cutoff = utcnow() - older_than
    totals = Collected()
    after = 0
    while True:
        totals.lines = []
        last = run_transaction(
            settings.database_url,
            lambda session, after=after: _batch(session, settings, cutoff, after, dry_run, totals),
            actor=actor,
        )
        yield from totals.lines
        if last is None:
            break
        after = last
    uses = 0
    while True:
        count = run_transaction(
            settings.database_url, lambda session: _closed_uses(session, cutoff, dry_run), actor=actor
        )
        uses += count
        if dry_run or count < USE_BATCH:
            break
    verb = "would remove" if dry_run else "removed"
    yield (
        f"{verb}: {totals.jobs} job(s), {totals.tasks} task(s), {totals.events} event(s), "
        f"{totals.file_bytes / (1 << 20):.1f} MiB of files (ended before {cutoff:%Y-%m-%d %H:%M} UTC), "
        f"{uses} use record(s) of VM lifecycles wiped before then"
    )


def _closed_uses(session: Session, cutoff, dry_run: bool) -> int:
    """The use rows of lifecycles closed before `cutoff` (tasks keep their history strings); counted
    in full for a dry run, else removed a batch at a time."""
    closed = VMUse.wiped.is_not(None) & (VMUse.wiped < cutoff)
    if dry_run:
        return session.scalar(select(func.count()).select_from(VMUse).where(closed)) or 0
    ids = list(session.scalars(select(VMUse.id).where(closed).limit(USE_BATCH)))
    if ids:
        session.execute(delete(VMUse).where(VMUse.id.in_(ids)))
    return len(ids)
