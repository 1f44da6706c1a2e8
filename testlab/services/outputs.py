"""What tasks leave on the engine's disk: their logs and artifacts, as people read and fetch them.

The engine writes `jobs/<job>/tasks/<task>/log` as the command runs (appending; past its cap it is
rewritten to its last part behind a marked first line) and `.../artifacts/` when the task ends.

A reader never leaves a task's folder: artifact paths are checked part by part, symbolic links are
refused (an artifact set comes from a VM and may hold a link to anywhere), and nothing is read
through a path a request made up.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Step, Task
from testlab.domain.statuses import TaskStatus
from testlab.services.errors import NotFound, UserError


def job_tasks(session: Session, job_id: int, task_id: int | None = None) -> list[tuple[int, str, str, str]]:
    """(task id, step name, VM name, status) of the job's tasks, or of the one asked for."""
    query = (
        select(Task.id, Step.name, VM.name, Task.status)
        .join(Step, Task.step_id == Step.id)
        .outerjoin(VM, Task.vm_id == VM.id)
        .where(Task.job_id == job_id)
        .order_by(Step.number, Task.number)
    )
    if task_id is not None:
        query = query.where(Task.id == task_id)
    rows = [tuple(row) for row in session.execute(query)]
    if task_id is not None and not rows:
        raise UserError(f"job {job_id} has no task {task_id}")
    return rows


def task_dir(settings: Settings, job_id: int, task_id: int) -> Path:
    return settings.job_dir(job_id) / "tasks" / str(task_id)


def log_path(settings: Settings, job_id: int, task_id: int) -> Path:
    return task_dir(settings, job_id, task_id) / "log"


def follow_log(
    path: Path, still_running: Callable[[], bool], *, poll: float = 0.3, chunk: int = 1 << 16
) -> Iterator[bytes]:
    """The log's bytes as they are written, until the task ended and everything was read. A log
    rewritten to its last part (it grew past its cap) is followed from its new end."""
    offset = 0
    while True:
        running = still_running()  # asked before reading, so the last bytes are never missed
        size = path.stat().st_size if path.exists() else 0
        if size < offset:
            yield b"\n[testlab: the log was cut to its last part; following from its end]\n"
            offset = size
        if size > offset:
            with path.open("rb") as log:
                log.seek(offset)
                while data := log.read(min(chunk, size - offset)):
                    offset += len(data)
                    yield data
                    if offset >= size:
                        break
            continue
        if not running:
            return
        time.sleep(poll)


def task_running(session: Session, task_id: int) -> bool:
    return session.scalar(select(Task.status).where(Task.id == task_id)) in (
        TaskStatus.RUNNING,
        TaskStatus.QUEUED,
    )


def copy_artifacts(settings: Settings, session: Session, job_id: int, out: Path) -> list[Path]:
    """Copy each task's artifacts into `out/<task id>-<vm>/`, keeping their relative paths."""
    copied = []
    for task_id, _step, vm, _status in job_tasks(session, job_id):
        root = settings.job_dir(job_id) / "tasks" / str(task_id) / "artifacts"
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                target = out / f"{task_id}-{vm}" / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
    return copied


MAX_ARTIFACTS_LISTED = 10_000


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_log(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Bytes [offset, offset+limit) of a log and its current size (an absent log is empty)."""
    try:
        with path.open("rb") as log:
            size = os.fstat(log.fileno()).st_size
            if offset >= size:
                return b"", size
            log.seek(offset)
            return log.read(max(0, limit)), size
    except FileNotFoundError:
        return b"", 0


def list_artifacts(settings: Settings, job_id: int, task_id: int) -> list[dict]:
    """The task's artifacts as {path, size}, sorted; links and special files are left out."""
    root = task_dir(settings, job_id, task_id) / "artifacts"
    found: list[dict] = []
    if not root.is_dir() or root.is_symlink():
        return found
    for directory, subdirs, names in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.append({"path": path.relative_to(root).as_posix(), "size": info.st_size})
                if len(found) >= MAX_ARTIFACTS_LISTED:
                    return found
    return found


def artifact_file(settings: Settings, job_id: int, task_id: int, relative: str) -> Path:
    """The artifact at `relative` (as listed), never a path outside the task's artifacts."""
    parts = PurePosixPath(relative).parts
    if (
        not relative
        or relative.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in relative
    ):
        raise NotFound(f"artifact {relative!r}: no such artifact")
    root = task_dir(settings, job_id, task_id) / "artifacts"
    path = root
    for part in parts:
        path = path / part
        try:
            info = path.lstat()
        except OSError:
            raise NotFound(f"artifact {relative!r}: no such artifact") from None
        if stat.S_ISLNK(info.st_mode):
            raise NotFound(f"artifact {relative!r}: no such artifact")
    if not stat.S_ISREG(path.lstat().st_mode):
        raise NotFound(f"artifact {relative!r}: no such artifact")
    return path
