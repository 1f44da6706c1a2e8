"""The engine's files: what a task uploads, where its log and artifacts go, and leftovers to tidy.

Blocking file work; the engine runs these in threads, never on its event loop, and never inside a
database transaction.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from testlab.engine.work import TaskWork

ARTIFACT_STAGING_PREFIX = ".artifacts-"


def uploads(work: TaskWork) -> list[tuple[Path, str]]:
    """(local file, path in the agent's work dir): the job's files, then the artifacts of the step
    this one depends on, each under the task's directory."""
    found = [(work.files_dir / name, f"{work.remote_dir}/{name}") for name in work.files]
    for root in work.artifact_dirs:
        if root.is_dir():
            found += [
                (path, f"{work.remote_dir}/{path.relative_to(root).as_posix()}")
                for path in sorted(root.rglob("*"))
                if path.is_file()
            ]
    return found


def fresh_output_dir(work: TaskWork) -> Path:
    """A new try writes into an empty directory: whatever an earlier try left (a requeue whose clean-up
    was cut short) is removed first."""
    shutil.rmtree(work.output_dir, ignore_errors=True)
    work.output_dir.mkdir(parents=True, exist_ok=True)
    return work.output_dir


def output_dir(work: TaskWork) -> Path:
    """The directory of a re-attached task: its log goes on where it ended; staging folders of an
    artifact collection that was cut short (an engine killed mid-way) are removed."""
    work.output_dir.mkdir(parents=True, exist_ok=True)
    for stale in work.output_dir.glob(f"{ARTIFACT_STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return work.output_dir


def append(log_file, chunk: bytes) -> None:
    log_file.write(chunk)
    log_file.flush()


def move_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.replace(destination)
