"""The engine's files: what a task uploads, where its log and artifacts go, and leftovers to tidy.

Blocking file work; the engine runs these in threads, never on its event loop, and never inside a
database transaction.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from testlab.engine.work import TaskWork
from testlab.results import ReportProblem, ReportSummary, TestCase, collect_reports, partition, summarize

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


def open_try(work: TaskWork, max_log_bytes: int, *, attach: bool) -> tuple[CappedLog, list[tuple[Path, str]]]:
    """A try's files in one go (each trip to a thread costs the engine's loop more than the work):
    its log, opened, and what it uploads. A new try starts in an empty directory; a re-attached one
    goes on in its own and uploads nothing."""
    directory = output_dir(work) if attach else fresh_output_dir(work)
    return CappedLog(directory / "log", max_log_bytes), [] if attach else uploads(work)


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


def move_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.replace(destination)


_CUT_MARK = re.compile(rb"^\[testlab: the first (\d+) bytes of this log were cut\]\n")


class CappedLog:
    """A task's log that keeps its last part when the output is huge, so `yes` cannot fill the
    engine's disk. Past `cap` bytes, the log is rewritten to its last half behind a first line saying
    how many bytes were cut; each rewrite follows at least cap/2 new bytes, so every output byte is
    written at most twice. `received` counts every byte the command wrote, cut or kept: a re-attached
    follower resumes the agent's output from there."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = max(cap, 1024)
        self.cut = 0
        self._mark_length = 0
        if path.exists():
            with path.open("rb") as existing:
                match = _CUT_MARK.match(existing.readline())
            if match:
                self.cut, self._mark_length = int(match.group(1)), len(match.group(0))
        self._file = path.open("ab")
        self.size = self._file.tell()

    @property
    def received(self) -> int:
        return self.cut + self.size - self._mark_length

    def append(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._file.flush()
        self.size += len(chunk)
        if self.size > self.cap:
            self._keep_the_end()

    def _keep_the_end(self) -> None:
        keep = self.cap // 2
        self._file.close()
        with self.path.open("rb") as source:
            source.seek(self.size - keep)
            tail = source.read(keep)
        self.cut += self.size - self._mark_length - keep
        mark = f"[testlab: the first {self.cut} bytes of this log were cut]\n".encode()
        partial = self.path.with_name(self.path.name + ".cut")
        partial.write_bytes(mark + tail)
        os.replace(partial, self.path)
        self._mark_length = len(mark)
        self._file = self.path.open("ab")
        self.size = self._file.tell()

    def close(self) -> None:
        self._file.close()


def read_reports(work: TaskWork) -> tuple[list[TestCase], list[ReportProblem], ReportSummary]:
    """Parse the task's reports from its collected artifacts: (cases, problems, their sum). A report
    that is missing or unreadable is a problem of its own, never skipped."""
    if not work.reports:
        return [], [], summarize(())
    cases, problems = partition(collect_reports(work.output_dir / "artifacts", work.reports))
    return cases, problems, summarize([*cases, *problems])
