"""How a task ended, in one line for people: the one place that words a task's outcome.

The listings, the web pages and the notifications all call `classify`, so a task reads the same
everywhere, and the line between the infrastructure's faults and the test's is drawn once.

    status     evidence                   kind             label, for example
    ---------  -------------------------  ---------------  ------------------------------------------
    queued     the last try's reason      queued           queued (last try: agent unreachable)
    running                               running          running
    completed  exit 0, nothing failing    completed        completed
    ended      failed or error cases      test-failures    failed: 3 test failures, exit code 1
    ended      report problems only       report-problems  failed: results.xml truncated
    ended      a non-zero exit code only  command-failed   failed: exit code 2
    failed     no exit code known         command-failed   failed: killed (the task's detail)
    timeout    the time limit, failures   timeout          timeout after 30m (2 test failures)
    boterror   the infrastructure reason  infrastructure   boterror: agent unreachable (after 3 tries)
    canceled   the task's detail          canceled         canceled: job canceled
    skipped    the task's detail          skipped          skipped: build failed

("ended" is completed or failed.) Only `infrastructure` has `is_infrastructure` set.

Rules worth knowing:

- For a command that ran to its end (completed, failed) the evidence decides the kind, most telling
  first: failing cases, then report problems, then the exit code. A `completed` row whose counts
  show failures (which `summary.status_after_exit` never gives) is shown as the failure it is.
- Infrastructure errors never count as test failures: a boterror's verdict has `failures == 0`
  and its label speaks only of the infrastructure, whatever a partial report said.
- A timeout is the test's fault (it hung), not the infrastructure's; the failures seen before the
  kill are mentioned, its missing or cut reports are not (they are expected after a kill).
- Canceled and skipped tasks did not run to a verdict: no failures, no infrastructure fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from testlab.domain.durations import format_duration
from testlab.domain.statuses import TaskStatus
from testlab.results.model import ReportProblem


class VerdictKind:
    QUEUED: Final = "queued"
    RUNNING: Final = "running"
    COMPLETED: Final = "completed"
    TEST_FAILURES: Final = "test-failures"
    REPORT_PROBLEMS: Final = "report-problems"
    COMMAND_FAILED: Final = "command-failed"
    TIMEOUT: Final = "timeout"
    INFRASTRUCTURE: Final = "infrastructure"
    CANCELED: Final = "canceled"
    SKIPPED: Final = "skipped"

    ALL: Final = frozenset(
        {
            QUEUED,
            RUNNING,
            COMPLETED,
            TEST_FAILURES,
            REPORT_PROBLEMS,
            COMMAND_FAILED,
            TIMEOUT,
            INFRASTRUCTURE,
            CANCELED,
            SKIPPED,
        }
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """A task's outcome for people.

    `label` is the one line shown ("failed: 3 test failures"); `reason` is the part after the
    status word ("3 test failures"), empty when there is nothing to add; `failures` is the number of
    test failures the outcome counts (always 0 for an infrastructure error).
    """

    kind: str
    label: str
    reason: str
    is_infrastructure: bool
    failures: int = 0


def classify(
    status: str,
    *,
    exit_code: int | None = None,
    failures: int | None = None,
    problems: Sequence[ReportProblem] = (),
    detail: str = "",
    timeout: float | None = None,
) -> Verdict:
    """Classify a task's end (or its state, while it has none yet). See the module's table.

    `failures` is the task's failed + error case count (None when it has no reports), `problems`
    its report problems, `detail` the task's recorded reason (for a boterror, the infrastructure
    reason), `timeout` its time limit in seconds.
    """
    if status not in TaskStatus.ALL:
        raise ValueError(f"unknown task status {status!r}")
    failures = failures or 0
    if failures < 0:
        raise ValueError(f"a failure count cannot be negative, got {failures}")
    detail = " ".join(detail.split())  # one line, whatever the recorded text looked like
    if status == TaskStatus.QUEUED:
        return _plain(VerdictKind.QUEUED, "queued", f"last try: {detail}" if detail else "", bracket=True)
    if status == TaskStatus.RUNNING:
        return _plain(VerdictKind.RUNNING, "running", "")
    if status == TaskStatus.BOTERROR:
        return Verdict(
            VerdictKind.INFRASTRUCTURE,
            f"boterror: {detail or 'infrastructure error'}",
            detail or "infrastructure error",
            is_infrastructure=True,
        )
    if status == TaskStatus.TIMEOUT:
        return _timeout(failures, detail, timeout)
    if status == TaskStatus.CANCELED:
        return _plain(VerdictKind.CANCELED, "canceled", detail)
    if status == TaskStatus.SKIPPED:
        return _plain(VerdictKind.SKIPPED, "skipped", detail)
    return _finished(status, exit_code, failures, problems, detail)


def _finished(
    status: str, exit_code: int | None, failures: int, problems: Sequence[ReportProblem], detail: str
) -> Verdict:
    """A command that ran to its end (completed or failed): the evidence decides."""
    parts = []
    if failures:
        parts.append(_count(failures, "test failure"))
    if problems:
        first = problems[0]
        parts.append(f"{first.file} {first.kind}")
        if len(problems) > 1:
            parts.append(f"{_count(len(problems) - 1, 'more report problem')}")
    if exit_code:
        parts.append(f"exit code {exit_code}")
    if failures:
        kind = VerdictKind.TEST_FAILURES
    elif problems:
        kind = VerdictKind.REPORT_PROBLEMS
    elif exit_code or status == TaskStatus.FAILED:
        kind = VerdictKind.COMMAND_FAILED
    else:
        return _plain(VerdictKind.COMPLETED, "completed", "")
    reason = ", ".join(parts) or detail or "the command failed"
    return Verdict(kind, f"failed: {reason}", reason, is_infrastructure=False, failures=failures)


def _timeout(failures: int, detail: str, timeout: float | None) -> Verdict:
    after = timeout is not None
    reason = f"after {format_duration(timeout)}" if after else detail
    if failures:
        reason = (
            f"{reason} ({_count(failures, 'test failure')})" if reason else _count(failures, "test failure")
        )
    label = "timeout" if not reason else f"timeout {reason}" if after else f"timeout: {reason}"
    return Verdict(VerdictKind.TIMEOUT, label, reason, is_infrastructure=False, failures=failures)


def _plain(kind: str, word: str, reason: str, *, bracket: bool = False) -> Verdict:
    if not reason:
        label = word
    elif bracket:
        label = f"{word} ({reason})"
    else:
        label = f"{word}: {reason}"
    return Verdict(kind, label, reason, is_infrastructure=False)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
