"""TAP (Test Anything Protocol) reports read as a stream of test cases.

tappy's `Parser.parse_line` classifies each line (result, plan, diagnostic, bail out, version) and
its `Directive` reads `# SKIP` and `# TODO`. The lines are fed one at a time rather than through
`Parser.parse(file)` for two reasons: a line's length is bounded here (`Limits.max_line`: a
gigabyte without a newline costs 64 KiB), and the raw text of the lines tappy calls unknown (TAP 13
YAML blocks, indented subtest output) stays available to become the message of the test before
it. Nothing is kept between lines but the case being completed, so memory does not grow with the
number of tests.

How TAP maps to cases: `ok` passed, `not ok` failed, `# SKIP` skipped (whether ok or not), `not ok
# TODO` skipped (a known, expected failure: TAP says it does not fail the run) and `ok # TODO`
passed. `Bail out!` is an error case: the test suite itself said it could not go on. `# ...` lines
and indented lines after a test are its message. A stream that has no plan, or fewer tests than
its plan (`1..10` and 4 results), without a bail out, was cut: it is reported truncated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tap.line import Bail, Diagnostic, Plan, Result, Version
from tap.parser import Parser

from testlab.results.model import CaseStatus, Limits, ProblemKind, ReportProblem, TestCase, clip
from testlab.results.source import BudgetedReader

BAIL_OUT_NAME = "Bail out!"


@dataclass
class _Pending:
    """A test whose message may still grow with the diagnostic lines that follow it."""

    suite: str
    name: str
    status: str
    lines: list[str] = field(default_factory=list)
    size: int = 0

    def add(self, text: str, limits: Limits) -> None:
        if not text or self.status == CaseStatus.PASSED or self.size > limits.max_message:
            return  # a passing test's chatter is not kept; a long message is cut anyway
        self.lines.append(text)
        self.size += len(text) + 1

    def case(self, limits: Limits) -> TestCase:
        return TestCase(
            suite=self.suite,
            name=self.name,
            status=self.status,
            message=clip("\n".join(self.lines).strip(), limits.max_message),
        )


def read_tap(source: BudgetedReader, file: str, limits: Limits) -> Iterator[TestCase | ReportProblem]:
    """Yield the cases of a TAP stream as they are read, then its problems, if any.

    `file` is the suite of every case (TAP has no suites) and names the report in problems.
    """
    parser = Parser()
    suite = clip(file, limits.max_name)
    plan: Plan | None = None
    plan_after_tests = False
    bailed = False
    seen = 0
    pending: _Pending | None = None
    misnumbered: str | None = None
    after_plan: str | None = None
    for number, text in enumerate(_lines(source, limits.max_line), start=1):
        if text is None:
            yield from _flush(pending, limits)
            yield ReportProblem(file, ProblemKind.UNREADABLE, f"line {number} is not UTF-8 text")
            return
        try:
            line = parser.parse_line(text.rstrip())
        except ValueError as error:  # tappy refuses "TAP version 12": versions below 13 are errors
            yield from _flush(pending, limits)
            yield ReportProblem(file, ProblemKind.UNREADABLE, f"line {number}: {error}")
            return
        if isinstance(line, Result):
            yield from _flush(pending, limits)
            pending = None
            if seen == limits.max_cases:
                yield ReportProblem(
                    file,
                    ProblemKind.TOO_LARGE,
                    f"more than {limits.max_cases} test cases; the rest of the file is not read",
                )
                return
            seen += 1
            if line.number is not None and line.number != seen and misnumbered is None:
                misnumbered = f"line {number}: test {line.number} where test {seen} was expected"
            if plan_after_tests and after_plan is None:
                after_plan = f"line {number}: a test after the plan that ended the stream"
            pending = _result(line, seen, suite, limits)
            pending.add(_directive_message(line), limits)
        elif isinstance(line, Plan):
            yield from _flush(pending, limits)
            pending = None
            if plan is not None:
                after_plan = after_plan or f"line {number}: a second plan"
            else:
                plan, plan_after_tests = line, seen > 0
        elif isinstance(line, Bail):
            yield from _flush(pending, limits)
            pending = None
            reason = line.reason.strip()
            yield TestCase(
                suite=suite,
                name=BAIL_OUT_NAME,
                status=CaseStatus.ERROR,
                message=clip(reason, limits.max_message),
            )
            bailed = True
            break
        elif isinstance(line, Diagnostic):
            if pending is not None:
                pending.add(line.text.lstrip("#").strip(), limits)
        elif isinstance(line, Version):
            continue
        elif pending is not None and text[:1].isspace() and text.strip():
            pending.add(text.rstrip(), limits)  # a YAML block or a subtest's output
    yield from _flush(pending, limits)
    yield from _plan_problems(file, plan, seen, bailed, misnumbered, after_plan)


def _result(line: Result, number: int, suite: str, limits: Limits) -> _Pending:
    if line.skip:
        status = CaseStatus.SKIPPED
    elif line.todo:
        status = CaseStatus.PASSED if line.ok else CaseStatus.SKIPPED
    else:
        status = CaseStatus.PASSED if line.ok else CaseStatus.FAILED
    name = line.description
    if name.startswith("-"):
        name = name[1:].strip()
    return _Pending(suite=suite, name=clip(name or f"test {number}", limits.max_name), status=status)


def _directive_message(line: Result) -> str:
    """What the `# ...` part of a result line says: a skip's reason, a known failure's TODO."""
    directive = line.directive
    reason = (directive.reason or "").strip()
    if directive.skip:
        return reason
    if directive.todo:
        return f"TODO: {reason}" if reason else "TODO"
    return directive.text.strip()


def _flush(pending: _Pending | None, limits: Limits) -> Iterator[TestCase]:
    if pending is not None:
        yield pending.case(limits)


def _plan_problems(
    file: str, plan: Plan | None, seen: int, bailed: bool, misnumbered: str | None, after_plan: str | None
) -> Iterator[ReportProblem]:
    if bailed:
        return  # the bail out is the test suite's own account of why the rest is missing
    if plan is None:
        yield ReportProblem(
            file,
            ProblemKind.TRUNCATED,
            f"no plan (1..N) after {seen} tests: the stream was cut before its end",
        )
        return
    if seen < plan.expected_tests:
        yield ReportProblem(
            file,
            ProblemKind.TRUNCATED,
            f"the plan is 1..{plan.expected_tests} but only {seen} tests were seen",
        )
    elif seen > plan.expected_tests:
        yield ReportProblem(
            file, ProblemKind.INCONSISTENT, f"the plan is 1..{plan.expected_tests} but {seen} tests were seen"
        )
    elif misnumbered or after_plan:
        yield ReportProblem(file, ProblemKind.INCONSISTENT, misnumbered or after_plan or "")


def _lines(source: BudgetedReader, max_line: int) -> Iterator[str | None]:
    """The file's lines as text, each cut to `max_line` bytes; None for a line that is not UTF-8.

    A byte order mark (which some Windows tools write) is dropped from the first line.
    """
    first = True
    while True:
        raw = source.readline(max_line)
        if not raw:
            return
        if first:
            raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
        if len(raw) == max_line and not raw.endswith(b"\n"):
            while True:  # skip the rest of an overlong line without holding it
                rest = source.readline(max_line)
                if not rest or rest.endswith(b"\n"):
                    break
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            if len(raw) == max_line:  # maybe a character cut in two at the limit
                yield raw.decode("utf-8", "ignore")
            else:
                yield None
