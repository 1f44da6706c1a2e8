"""A task's outputs on the engine's disk: its log and its artifacts, read safely for the web and API.

The engine writes them under `jobs/<job>/tasks/<task>/` (`log`, `artifacts/...`). A reader never
leaves that folder: artifact paths are checked part by part, symbolic links are refused (an artifact
set comes from a VM and may hold a link to anywhere), and nothing is read through a path a request
made up.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from testlab.config import Settings
from testlab.services.errors import NotFound

MAX_ARTIFACTS_LISTED = 10_000


def task_dir(settings: Settings, job_id: int, task_id: int) -> Path:
    return settings.job_dir(job_id) / "tasks" / str(task_id)


def log_path(settings: Settings, job_id: int, task_id: int) -> Path:
    return task_dir(settings, job_id, task_id) / "log"


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
