"""Putting a task back in the queue: the one place that decides between another try and `boterror`."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from testlab.db.models import Job, Step, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow, split_row
from testlab.db.session import after_commit
from testlab.domain.statuses import TaskStatus
from testlab.services.results import clear_task_results
from testlab.services.transitions import roll_up_job, set_task_status
from testlab.services.uses import end_task_use


def load_task_rows(session: Session, task_id: int) -> tuple[EditableRow, EditableRow, EditableRow] | None:
    """A task with its step and its job, as editable rows (testlab/db/rows.py), in one statement:
    the engine starts and ends every task with all three."""
    row = _TASK_STEP_JOB_ROWS.execute(session, {"task": task_id}).first()
    if row is None:
        return None
    task, step, job = split_row(row, _TABLES)
    return task, step, job


_TABLES = (Task.__table__, Step.__table__, Job.__table__)
_TASK_STEP_JOB_ROWS = Prepared(
    select(*_TABLES)
    .join_from(Task.__table__, Step.__table__, Step.id == Task.step_id)
    .join(Job.__table__, Job.id == Task.job_id)
    .where(Task.id == bindparam("task"))
)


def requeue_task(
    session: Session, task: Task, reason: str, *, count_try: bool, max_tries: int, output_dir: Path
) -> None:
    """Work that died: its partial results go (after the commit), and the task is queued for another
    try on a clean VM, or ends `boterror` once it used `max_tries` (never an endless loop), or
    `canceled` if its job was. The caller sees to the VM, whose fault it may or may not be."""
    job = session.get(Job, task.job_id)
    if task.vm_id is not None and task.status == TaskStatus.RUNNING:
        if job.cancel_requested:
            outcome = TaskStatus.CANCELED
        elif (task.tries if count_try else max(0, task.tries - 1)) >= max_tries:
            outcome = TaskStatus.BOTERROR
        else:
            outcome = None  # another try follows: this use gave no verdict
        task.history_at_end, _ = end_task_use(
            session, task.vm_id, task_id=task.id, job_id=task.job_id, outcome=outcome, now=utcnow()
        )
    after_commit(session, lambda: shutil.rmtree(output_dir, ignore_errors=True))
    clear_task_results(session, task.id)
    if not count_try:
        task.tries = max(0, task.tries - 1)
    task.command_id = task.agent_url = task.boot_id = None
    task.exit_code = None
    if job.cancel_requested:
        set_task_status(session, task, TaskStatus.CANCELED, f"{reason}; job canceled")
    elif task.tries >= max_tries:
        task.detail = f"{reason} (after {task.tries} tries)"
        set_task_status(session, task, TaskStatus.BOTERROR, task.detail)
    else:
        task.detail = reason
        set_task_status(session, task, TaskStatus.QUEUED, f"requeued: {reason}")
        if session.scalar(select(Step.pool_labels).where(Step.id == task.step_id)):
            task.vm_id = None  # a pool task tries again on whichever VM of its pool is free first
    roll_up_job(session, job)
