"""JUnit XML reports read as a stream of test cases.

Why streaming: junitparser's `JUnitXml.fromfile` builds the whole element tree first. On a
100,000-case report of 7.4 MiB (bench/bench_reports.py) that tree takes about 63 MiB of Python
heap and raises the process's resident peak by about 95 MiB, and it grows with every case and
every line of captured output: an engine collecting several large reports at once would need
memory in proportion to what test suites choose to write. Instead the file goes through
`iterparse`: each `<testcase>` element is wrapped in junitparser's `TestCase` as soon as it is
complete (so junitparser, not this module, knows what a result, a message or a time is), turned
into a `model.TestCase`, and removed from its parent. Only the open suites and the case being read
are in memory: the same report peaks at about 0.2 MiB of heap, whatever its number of cases.

Why defusedxml: a report is written by the code under test, so it is untrusted input. Document type
declarations are refused outright (no JUnit writer needs one), which stops entity expansion bombs
and external entities at their first bytes, whatever the expat underneath would have done. The
price is expat driven through Python-level handlers: about 1 s per 100,000 cases instead of 0.5 s.
A single element larger than memory allows is not possible either: `Limits.max_bytes` bounds the
file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from xml.parsers.expat import errors as expat_errors

import junitparser
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from testlab.results.model import CaseStatus, Limits, ProblemKind, ReportProblem, TestCase, clip
from testlab.results.source import BudgetedReader

ROOT_TAGS = frozenset({"testsuites", "testsuite"})

# Parse errors that mean "the document stopped before its end", when met at the end of the file.
_EARLY_END = frozenset(
    expat_errors.codes[message]
    for message in (
        expat_errors.XML_ERROR_NO_ELEMENTS,
        expat_errors.XML_ERROR_UNCLOSED_TOKEN,
        expat_errors.XML_ERROR_PARTIAL_CHAR,
        expat_errors.XML_ERROR_UNCLOSED_CDATA_SECTION,
    )
)

# Most significant first: a case with both a <failure> and an <error> is an error.
_RESULT_STATUS = (
    (junitparser.Error, CaseStatus.ERROR),
    (junitparser.Failure, CaseStatus.FAILED),
    (junitparser.Skipped, CaseStatus.SKIPPED),
)


def read_junit(source: BudgetedReader, file: str, limits: Limits) -> Iterator[TestCase | ReportProblem]:
    """Yield the cases of a JUnit XML report as they are read, then at most one problem.

    `file` names the report in problems and is the suite of cases outside any named suite. A
    problem ends the reading; the cases yielded before it stand (a report cut after 900 cases still
    shows those 900, and the cut).
    """
    suites: list[str] = []  # names of the open <testsuite> elements, outermost first
    open_elements: list[ElementTree.Element] = []
    case_depth = 0  # > 0 inside a <testcase>, whose children are kept until it ends
    cases = 0
    try:
        for event, element in iterparse(source, events=("start", "end"), forbid_dtd=True):
            if event == "start":
                if not open_elements and element.tag not in ROOT_TAGS:
                    yield ReportProblem(
                        file,
                        ProblemKind.UNREADABLE,
                        f"XML whose root is <{element.tag}>, not a JUnit <testsuites> or <testsuite>",
                    )
                    return
                if element.tag == "testcase":
                    case_depth += 1
                elif element.tag == "testsuite" and case_depth == 0:
                    suites.append(junitparser.TestSuite.fromelem(element).name or "")
                open_elements.append(element)
                continue
            open_elements.pop()
            if element.tag == "testcase":
                case_depth -= 1
                if case_depth == 0:
                    if cases == limits.max_cases:
                        yield ReportProblem(
                            file,
                            ProblemKind.TOO_LARGE,
                            f"more than {limits.max_cases} test cases; the rest of the file is not read",
                        )
                        return
                    cases += 1
                    yield _case(junitparser.TestCase.fromelem(element), suites, file, limits)
            elif element.tag == "testsuite" and case_depth == 0:
                suites.pop()
            if case_depth == 0 and open_elements:
                # Done with it: dropping it from its parent is what keeps memory flat.
                open_elements[-1].remove(element)
    except ElementTree.ParseError as error:
        yield _parse_problem(error, source, file)
    except DefusedXmlException as error:
        yield ReportProblem(file, ProblemKind.UNREADABLE, f"refused: {_defused_reason(error)}")


def _case(case: junitparser.TestCase, suites: list[str], file: str, limits: Limits) -> TestCase:
    """One junitparser test case as a `model.TestCase`.

    The suite is the case's `classname` when it has one (pytest names its one suite "pytest" and
    puts the module in `classname`), else the path of the enclosing suites' names.
    """
    status, message = CaseStatus.PASSED, ""
    results = case.result
    for result_type, result_status in _RESULT_STATUS:
        found = [result for result in results if isinstance(result, result_type)]
        if found:
            status, message = result_status, _message(found[0])
            break
    suite = case.classname or "/".join(name for name in suites if name) or file
    return TestCase(
        suite=clip(suite, limits.max_name),
        name=clip(case.name or "(unnamed)", limits.max_name),
        status=status,
        message=clip(message, limits.max_message),
        duration=_duration(case),
    )


def _message(result: junitparser.Result) -> str:
    """The result's `message` attribute and its text (a traceback, usually), whichever are there."""
    parts = [part.strip() for part in (result.message, result.text) if part and part.strip()]
    if len(parts) == 2 and parts[0] == parts[1]:
        parts.pop()
    return "\n".join(parts)


def _duration(case: junitparser.TestCase) -> float | None:
    try:
        seconds = case.time
    except ValueError:  # time="fast": a duration we cannot read is no duration, not a broken report
        return None
    if seconds is None or not 0 <= seconds < float("inf"):
        return None
    return seconds


def _parse_problem(error: ElementTree.ParseError, source: BudgetedReader, file: str) -> ReportProblem:
    line, column = error.position
    if source.at_eof and error.code in _EARLY_END:
        return ReportProblem(
            file, ProblemKind.TRUNCATED, f"the XML ends before its last element is closed (line {line})"
        )
    reason = str(error).split(":", 1)[0]  # expat's words without its position, which we give once
    return ReportProblem(
        file, ProblemKind.UNREADABLE, f"malformed XML at line {line}, column {column}: {reason}"
    )


def _defused_reason(error: DefusedXmlException) -> str:
    name = type(error).__name__
    if name == "DTDForbidden":
        return "a document type declaration (<!DOCTYPE>); JUnit reports need none"
    if name == "EntitiesForbidden":
        return "an XML entity declaration (entity expansion is not allowed)"
    if name == "ExternalReferenceForbidden":
        return "a reference to an external entity"
    return str(error)
