"""The one classification of a task's end: its whole table, and the line between infrastructure and test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.domain.statuses import TaskStatus as S
from testlab.results import ProblemKind, ReportProblem, Verdict, VerdictKind, classify

TRUNCATED = ReportProblem("results/unit.xml", ProblemKind.TRUNCATED, "the XML ends early")
MISSING = ReportProblem("results/*.tap", ProblemKind.MISSING, "no file matches this report pattern")


@pytest.mark.parametrize(
    ("status", "facts", "kind", "label", "failures"),
    [
        (S.QUEUED, {}, VerdictKind.QUEUED, "queued", 0),
        (S.QUEUED, {"detail": "agent unreachable: timed out"}, VerdictKind.QUEUED,
         "queued (last try: agent unreachable: timed out)", 0),
        (S.RUNNING, {}, VerdictKind.RUNNING, "running", 0),
        (S.COMPLETED, {"exit_code": 0, "failures": 0}, VerdictKind.COMPLETED, "completed", 0),
        (S.COMPLETED, {"exit_code": 0}, VerdictKind.COMPLETED, "completed", 0),
        (S.FAILED, {"exit_code": 1, "failures": 3}, VerdictKind.TEST_FAILURES,
         "failed: 3 test failures, exit code 1", 3),
        (S.FAILED, {"exit_code": 0, "failures": 1}, VerdictKind.TEST_FAILURES, "failed: 1 test failure", 1),
        (S.FAILED, {"exit_code": 1, "failures": 2, "problems": [TRUNCATED]}, VerdictKind.TEST_FAILURES,
         "failed: 2 test failures, results/unit.xml truncated, exit code 1", 2),
        (S.FAILED, {"exit_code": 0, "problems": [TRUNCATED]}, VerdictKind.REPORT_PROBLEMS,
         "failed: results/unit.xml truncated", 0),
        (S.FAILED, {"exit_code": 0, "problems": [MISSING, TRUNCATED]}, VerdictKind.REPORT_PROBLEMS,
         "failed: results/*.tap missing, 1 more report problem", 0),
        (S.FAILED, {"exit_code": 2}, VerdictKind.COMMAND_FAILED, "failed: exit code 2", 0),
        (S.FAILED, {"exit_code": 2, "failures": 0}, VerdictKind.COMMAND_FAILED, "failed: exit code 2", 0),
        (S.FAILED, {"detail": "killed"}, VerdictKind.COMMAND_FAILED, "failed: killed", 0),
        (S.FAILED, {}, VerdictKind.COMMAND_FAILED, "failed: the command failed", 0),
        # A completed row whose counts say otherwise is shown as what the counts say.
        (S.COMPLETED, {"exit_code": 0, "failures": 4}, VerdictKind.TEST_FAILURES,
         "failed: 4 test failures", 4),
        (S.TIMEOUT, {"timeout": 30}, VerdictKind.TIMEOUT, "timeout after 30s", 0),
        (S.TIMEOUT, {"timeout": 1800, "failures": 2, "problems": [TRUNCATED]}, VerdictKind.TIMEOUT,
         "timeout after 30m (2 test failures)", 2),
        (S.TIMEOUT, {"detail": "timed out: killed"}, VerdictKind.TIMEOUT, "timeout: timed out: killed", 0),
        (S.TIMEOUT, {}, VerdictKind.TIMEOUT, "timeout", 0),
        (S.BOTERROR, {"detail": "agent unreachable (after 3 tries)"}, VerdictKind.INFRASTRUCTURE,
         "boterror: agent unreachable (after 3 tries)", 0),
        (S.BOTERROR, {"detail": "agent unreachable (after 3 tries)", "failures": 5, "exit_code": 1,
                      "problems": [TRUNCATED]}, VerdictKind.INFRASTRUCTURE,
         "boterror: agent unreachable (after 3 tries)", 0),
        (S.BOTERROR, {}, VerdictKind.INFRASTRUCTURE, "boterror: infrastructure error", 0),
        (S.CANCELED, {"detail": "job canceled"}, VerdictKind.CANCELED, "canceled: job canceled", 0),
        (S.CANCELED, {"failures": 2}, VerdictKind.CANCELED, "canceled", 0),
        (S.SKIPPED, {"detail": "build failed"}, VerdictKind.SKIPPED, "skipped: build failed", 0),
        (S.SKIPPED, {}, VerdictKind.SKIPPED, "skipped", 0),
    ],
)  # fmt: skip
def test_the_table(status, facts, kind, label, failures):
    verdict = classify(status, **facts)
    assert (verdict.kind, verdict.label, verdict.failures) == (kind, label, failures)
    assert verdict.is_infrastructure is (status == S.BOTERROR)


def test_reason_is_the_label_without_its_status_word():
    assert classify(S.FAILED, exit_code=2) == Verdict(
        VerdictKind.COMMAND_FAILED, "failed: exit code 2", "exit code 2", is_infrastructure=False
    )
    assert classify(S.BOTERROR, detail="revert failed").reason == "revert failed"
    assert classify(S.COMPLETED, exit_code=0).reason == ""


def test_a_detail_over_several_lines_is_shown_on_one():
    assert classify(S.BOTERROR, detail="agent unreachable:\n  connection refused\n").label == (
        "boterror: agent unreachable: connection refused"
    )


def test_nonsense_is_refused():
    with pytest.raises(ValueError, match="unknown task status"):
        classify("exploded")
    with pytest.raises(ValueError, match="negative"):
        classify(S.FAILED, failures=-1)


problems = st.lists(st.sampled_from([TRUNCATED, MISSING]), max_size=3)


@given(
    st.sampled_from(sorted(S.ALL)),
    st.none() | st.integers(-255, 255),
    st.none() | st.integers(0, 10_000),
    problems,
    st.text(max_size=40),
    st.none() | st.floats(0, 86400),
)
def test_every_task_has_one_line_verdict(status, exit_code, failures, problems, detail, timeout):
    verdict = classify(
        status, exit_code=exit_code, failures=failures, problems=problems, detail=detail, timeout=timeout
    )
    assert verdict.kind in VerdictKind.ALL
    assert verdict.label and "\n" not in verdict.label
    # Infrastructure errors never count as test failures; only they are infrastructure.
    assert verdict.is_infrastructure == (status == S.BOTERROR)
    if verdict.is_infrastructure:
        assert verdict.failures == 0 and "test failure" not in verdict.label.removeprefix(
            f"boterror: {detail}"
        )
    if status in {S.QUEUED, S.RUNNING, S.CANCELED, S.SKIPPED}:
        assert verdict.failures == 0
    if status in {S.COMPLETED, S.FAILED} and failures:
        assert verdict.kind == VerdictKind.TEST_FAILURES and verdict.failures == failures
