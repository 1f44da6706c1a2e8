"""What a test report becomes: test cases, report problems, and the limits that keep reading bounded.

The format readers (`junit`, `tap`) produce only these types, so everything downstream (storage,
summaries, the verdict shown to people) is the same whatever format a test suite writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


class CaseStatus:
    """How one test case ended. `error` is a test that could not run to a verdict (a JUnit <error>,
    a TAP `Bail out!`); it counts as a failure of the test, never of the infrastructure."""

    PASSED: Final = "passed"
    FAILED: Final = "failed"
    SKIPPED: Final = "skipped"
    ERROR: Final = "error"

    ALL: Final = frozenset({PASSED, FAILED, SKIPPED, ERROR})
    # Statuses that count in a task's failures.
    FAILING: Final = frozenset({FAILED, ERROR})


class ProblemKind:
    """Why a declared report could not be (fully) read. Each one fails the task, so a test suite that
    crashed before writing its report can never pass for one that ran no test."""

    MISSING: Final = "missing"  # a declared pattern matched no file
    EMPTY: Final = "empty"  # the file has no content at all (the writer died before its first byte)
    TRUNCATED: Final = "truncated"  # the file ends early: unclosed XML, TAP without its (full) plan
    UNREADABLE: Final = "unreadable"  # not JUnit XML nor TAP, malformed, not UTF-8, no permission
    INCONSISTENT: Final = "inconsistent"  # well-formed but self-contradictory (more TAP tests than planned)
    TOO_LARGE: Final = "too-large"  # over a size or case limit: refused rather than exhaust the engine

    ALL: Final = frozenset({MISSING, EMPTY, TRUNCATED, UNREADABLE, INCONSISTENT, TOO_LARGE})


@dataclass(frozen=True, slots=True)
class TestCase:
    """One test of one report. `message` is kept only for cases that did not pass (a passing case's
    output is noise at 100,000 cases) and is bounded (see `Limits.max_message`)."""

    __test__ = False  # not a pytest test class, despite its name

    suite: str
    name: str
    status: str
    message: str = ""
    duration: float | None = None  # seconds, when the report gives it

    def __post_init__(self) -> None:
        if self.status not in CaseStatus.ALL:
            raise ValueError(f"unknown test case status {self.status!r}")

    @property
    def failing(self) -> bool:
        return self.status in CaseStatus.FAILING


@dataclass(frozen=True, slots=True)
class ReportProblem:
    """A report that is missing or could not be fully read: a failure of its own kind, named by file.

    `file` is the report's name relative to the task's work directory, or the pattern that matched
    nothing for `missing`.
    """

    file: str
    kind: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in ProblemKind.ALL:
            raise ValueError(f"unknown report problem kind {self.kind!r}")

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one report may cost to read.

    Reading streams (see `junit` and `tap`), so memory does not grow with the number of cases; these
    bounds cover what streaming cannot: a single element or line of unbounded size, and a runaway
    test suite writing millions of cases that would all become database rows.
    """

    max_bytes: int = 256 * 1024 * 1024  # a larger file is refused (too-large) without being parsed
    max_cases: int = 500_000  # cases past this are not read (too-large)
    max_message: int = 4096  # bytes of UTF-8 kept of a failure message
    max_name: int = 1024  # bytes of UTF-8 kept of a suite or case name
    max_line: int = 64 * 1024  # bytes of a TAP line kept; the rest of a longer line is skipped


DEFAULT_LIMITS: Final = Limits()

_CUT_MARK = " [...]"


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` bytes of UTF-8 (never in the middle of a character),
    marked when cut so that nobody mistakes the start of a message for all of it."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    keep = max(0, max_bytes - len(_CUT_MARK))
    return encoded[:keep].decode("utf-8", "ignore") + _CUT_MARK[: max_bytes - keep]
