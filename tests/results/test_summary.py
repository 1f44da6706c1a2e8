"""Summing a task's cases, and the one rule for completed versus failed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.domain.statuses import TaskStatus
from testlab.results import (
    CaseStatus,
    ProblemKind,
    ReportProblem,
    ReportSummary,
    TestCase,
    status_after_exit,
    summarize,
)

PROBLEM = ReportProblem("results/*.xml", ProblemKind.MISSING, "no file matches this report pattern")


def case(status: str) -> TestCase:
    return TestCase("s", "t", status)


def test_counts_by_status():
    summary = summarize(
        [
            case("passed"),
            case("failed"),
            case("error"),
            case("skipped"),
            case("passed"),
            case("failed"),
            PROBLEM,
        ]
    )
    assert (summary.passed, summary.failed, summary.error, summary.skipped) == (2, 2, 1, 1)
    assert summary.failures == 3  # failed + error
    assert summary.total == 6
    assert summary.problems == [PROBLEM]
    assert summary.fails_task


@pytest.mark.parametrize(
    ("items", "fails"),
    [
        ([], False),  # no report declared, none read
        ([case("passed"), case("skipped")], False),
        ([case("failed")], True),
        ([case("error")], True),
        ([case("passed"), PROBLEM], True),  # a report problem fails the task on its own
    ],
)
def test_fails_task(items, fails):
    assert summarize(items).fails_task is fails


@pytest.mark.parametrize(
    ("exit_code", "items", "status"),
    [
        (0, None, TaskStatus.COMPLETED),
        (0, [case("passed")], TaskStatus.COMPLETED),
        (1, None, TaskStatus.FAILED),
        (2, [case("passed")], TaskStatus.FAILED),  # a clean report does not hide a failing command
        (0, [case("failed")], TaskStatus.FAILED),  # a zero exit code does not hide a failing test
        (0, [PROBLEM], TaskStatus.FAILED),
        (-9, [], TaskStatus.FAILED),
    ],
)
def test_status_after_exit(exit_code, items, status):
    assert status_after_exit(exit_code, None if items is None else summarize(items)) == status


@given(st.lists(st.sampled_from(sorted(CaseStatus.ALL))), st.integers(0, 3))
def test_summary_adds_up(statuses, problems):
    items = [case(s) for s in statuses] + [PROBLEM] * problems
    summary = summarize(items)
    assert summary.total == len(statuses)
    assert summary.failures == sum(s in CaseStatus.FAILING for s in statuses)
    assert summary.fails_task == (summary.failures > 0 or problems > 0)
    streamed = ReportSummary()
    for item in items:
        streamed.add(item)
    assert streamed == summary
