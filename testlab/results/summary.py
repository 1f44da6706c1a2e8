"""A task's test cases summed into counts, and whether its reports fail the task.

The summary is built while the cases stream past (`ReportSummary.add`), so a caller storing
100,000 cases in batches sums them in the same pass and never holds them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from testlab.domain.statuses import TaskStatus
from testlab.results.model import CaseStatus, ReportProblem, TestCase


@dataclass
class ReportSummary:
    """Counts of a task's cases by status, and its report problems.

    `failures` (failed + error cases) is what the task's failure count shows. Report problems are
    kept apart, by file, because "results.xml truncated" tells people more than a number would; they
    fail the task all the same (`fails_task`).
    """

    passed: int = 0
    failed: int = 0
    error: int = 0
    skipped: int = 0
    problems: list[ReportProblem] = field(default_factory=list)

    def add(self, item: TestCase | ReportProblem) -> None:
        if isinstance(item, ReportProblem):
            self.problems.append(item)
        elif item.status == CaseStatus.PASSED:
            self.passed += 1
        elif item.status == CaseStatus.FAILED:
            self.failed += 1
        elif item.status == CaseStatus.ERROR:
            self.error += 1
        else:
            self.skipped += 1

    @property
    def failures(self) -> int:
        return self.failed + self.error

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.error + self.skipped

    @property
    def fails_task(self) -> bool:
        """True when the reports alone fail the task: a failed or error case, or any report problem.

        (The task also fails when its command exits non-zero, reports or not.)
        """
        return self.failures > 0 or bool(self.problems)


def summarize(items: Iterable[TestCase | ReportProblem]) -> ReportSummary:
    """Sum a stream of cases and problems (as `reports.collect_reports` yields them)."""
    summary = ReportSummary()
    for item in items:
        summary.add(item)
    return summary


def status_after_exit(exit_code: int, summary: ReportSummary | None = None) -> str:
    """`completed` or `failed` for a command that exited: the one rule for it.

    A task fails when its command exits non-zero or its reports fail it (a failed or error case, a
    report problem); a zero exit code does not hide a failing test, and a clean report does not hide
    a failing command.
    """
    if exit_code != 0 or (summary is not None and summary.fails_task):
        return TaskStatus.FAILED
    return TaskStatus.COMPLETED
