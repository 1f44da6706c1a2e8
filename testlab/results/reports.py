"""Test reports of a task: find the declared files, tell JUnit from TAP by content, read them.

A step declares `reports:` patterns; the files they match are collected with the task's artifacts
and read here into test cases and report problems. Everything is yielded as one stream, in file
order, so a caller can store cases in batches while it sums them (see `summary`) without ever
holding a whole report.

A declared report is never silently ignored: a pattern that matches nothing, a file that cannot be
opened, that is empty, cut short, neither JUnit XML nor TAP, or too large, each yields a
`ReportProblem` naming the file, and a problem fails the task.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from tap.parser import Parser

from testlab.results.junit import read_junit
from testlab.results.model import DEFAULT_LIMITS, Limits, ProblemKind, ReportProblem, TestCase
from testlab.results.source import BudgetedReader, OverBudget
from testlab.results.tap import read_tap

JUNIT = "junit"
TAP = "tap"

Item = TestCase | ReportProblem
_Reader = Callable[[BudgetedReader, str, Limits], Iterator[Item]]
_READERS: dict[str, _Reader] = {JUNIT: read_junit, TAP: read_tap}

HEAD_BYTES = 4096  # how much of a file is looked at to tell its format
_UTF8_BOM = b"\xef\xbb\xbf"
_TAP_OPENINGS = frozenset({"version", "plan", "test", "bail"})


def collect_reports(
    root: Path, patterns: Iterable[str], *, limits: Limits = DEFAULT_LIMITS
) -> Iterator[Item]:
    """Read every file under `root` matched by `patterns`, in pattern order then name order.

    `root` is where the task's files were collected, laid out as in its work directory on the VM.
    Patterns are matched as artifact patterns are (`glob` with `**` across directories, names
    starting with a dot only matched explicitly); a file matched by several patterns is read once.
    A pattern that matches no file yields a `missing` problem named by the pattern.
    """
    root = Path(root)
    real_root = root.resolve()
    seen: set[Path] = set()
    for pattern in patterns:
        _check_pattern(pattern)
        files = [path for path in _matches(root, pattern) if path.is_file()]
        if not files:
            yield ReportProblem(pattern, ProblemKind.MISSING, "no file matches this report pattern")
            continue
        for path in files:
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            name = path.relative_to(root).as_posix()
            if not real.is_relative_to(real_root):
                yield ReportProblem(name, ProblemKind.UNREADABLE, "a link leading outside the work directory")
                continue
            yield from read_report(path, name=name, limits=limits)


def read_report(path: Path, *, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Iterator[Item]:
    """Yield the test cases of one report file, and its problems (a problem ends its reading).

    `name` is how problems and TAP cases name the file (default: the file's name). The format is
    taken from the content, not the extension: test runners write `results.xml`, `out.txt` and
    `report` alike.
    """
    path = Path(path)
    name = name or path.name
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            yield ReportProblem(name, ProblemKind.UNREADABLE, "not a regular file")
            return
        if info.st_size > limits.max_bytes:
            yield ReportProblem(name, ProblemKind.TOO_LARGE, _too_large(info.st_size, limits.max_bytes))
            return
        with path.open("rb") as raw:
            head = raw.read(HEAD_BYTES)
            if not head.removeprefix(_UTF8_BOM).strip() and len(head) < HEAD_BYTES:
                yield ReportProblem(
                    name, ProblemKind.EMPTY, "the file is empty" if not head else "only blanks"
                )
                return
            kind = detect_format(head)
            if kind is None:
                yield ReportProblem(name, ProblemKind.UNREADABLE, _not_a_report(head))
                return
            raw.seek(0)
            source = BudgetedReader(raw, limits.max_bytes)
            try:
                yield from _READERS[kind](source, name, limits)
            except OverBudget:
                yield ReportProblem(
                    name, ProblemKind.TOO_LARGE, "the file grew past its size limit while read"
                )
    except FileNotFoundError:
        yield ReportProblem(name, ProblemKind.MISSING, "no such file")
    except OSError as error:
        yield ReportProblem(name, ProblemKind.UNREADABLE, f"cannot read: {error.strerror or error}")


def detect_format(head: bytes) -> str | None:
    """`JUNIT`, `TAP` or None (neither) from the first bytes of a file.

    XML (after an optional byte order mark and blanks) is taken for JUnit; whether its root is a
    JUnit one is checked while it is read. Text is TAP when its first line that is not blank or a
    `#` comment is one tappy recognises as TAP (a version, a plan, a test, a bail out); a text of
    comments alone is TAP too (a stream cut before its first test).
    """
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16: only XML declares its encoding
        text = head.decode("utf-16", "ignore").lstrip("\ufeff")
        return JUNIT if text.lstrip().startswith("<") else None
    body = head.removeprefix(_UTF8_BOM).lstrip()
    if body.startswith(b"<"):
        return JUNIT
    if b"\0" in body:
        return None
    # Leniently: a stray byte is the TAP reader's to report, with its line.
    lines = body.decode("utf-8", "replace").splitlines()
    if len(head) == HEAD_BYTES and len(lines) > 1:
        lines.pop()  # may be cut
    parser = Parser()
    for line in lines:
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        try:
            category = parser.parse_line(line).category
        except ValueError:  # "TAP version 12": TAP, even if one tappy refuses
            return TAP
        return TAP if category in _TAP_OPENINGS else None
    return TAP


def partition(items: Iterable[Item]) -> tuple[list[TestCase], list[ReportProblem]]:
    """Cases and problems as two lists: for small reports and tests; large ones are best streamed."""
    cases: list[TestCase] = []
    problems: list[ReportProblem] = []
    for item in items:
        (problems if isinstance(item, ReportProblem) else cases).append(item)
    return cases, problems


def _matches(root: Path, pattern: str) -> list[Path]:
    if glob.has_magic(pattern):
        found = glob.glob(os.path.join(glob.escape(str(root)), pattern), recursive=True)
        return [Path(path) for path in sorted(found)]
    candidate = root / pattern
    return [candidate] if candidate.exists() else []


def _check_pattern(pattern: str) -> None:
    """Job files are checked when read; this guards the pure core against being handed anything else."""
    parts = PurePosixPath(pattern).parts
    if not pattern or pattern.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"report pattern {pattern!r} must be relative, without '..'")


def _too_large(size: int, limit: int) -> str:
    return f"{_mib(size)} is over the {_mib(limit)} limit for a report; not read"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size % 2**20 else f"{size // 2**20} MiB"


def _not_a_report(head: bytes) -> str:
    if b"\0" in head:
        return "binary data, neither JUnit XML nor TAP"
    start = head.strip()[:40].decode("utf-8", "replace").splitlines()[0]
    return f"neither JUnit XML nor TAP (it starts with {start!r})"
