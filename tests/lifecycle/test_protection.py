"""The automatic protection rule: K failures of different jobs in a row after the same earlier use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.lifecycle.blame import Suspect
from testlab.lifecycle.model import Use, UseKind
from testlab.lifecycle.protection import wipe_advice
from tests.lifecycle.strategies import uses as use_strategy


def ok(job: int, step: str) -> Use:
    return Use(UseKind.TASK, job=job, step=step, outcome="completed")


def ko(job: int, step: str) -> Use:
    return Use(UseKind.TASK, job=job, step=step, outcome="failed")


def test_two_jobs_failing_after_the_same_use_wipe_the_vm():
    uses = [ok(1, "build"), ok(1, "scrub"), ko(2, "test"), ko(3, "test")]
    advice = wipe_advice(uses)
    assert advice is not None
    assert advice.suspect == uses[1]  # the most recent of the uses both failures followed
    assert advice.suspects == (uses[1], uses[0])
    assert advice.failures == (uses[2], uses[3])
    assert advice.reason == "tasks of 2 jobs (2, 3) failed in a row after step scrub of job 1"


def test_one_job_failing_twice_is_its_own_business():
    assert wipe_advice([ok(1, "scrub"), ko(2, "test"), ko(2, "test2")]) is None
    assert wipe_advice([ok(1, "scrub"), ko(2, "test")]) is None


def test_the_failures_must_be_the_latest_and_in_a_row():
    assert wipe_advice([ok(1, "scrub"), ko(2, "test"), ok(3, "test"), ko(4, "test")]) is None
    assert wipe_advice([ok(1, "scrub"), ko(2, "test"), ko(3, "test"), ok(4, "test")]) is None
    # Tasks without a verdict neither break the run nor count in it.
    running = Use(UseKind.TASK, job=5, step="test")
    canceled = Use(UseKind.TASK, job=6, step="test", outcome="canceled")
    advice = wipe_advice([ok(1, "scrub"), ko(2, "test"), running, canceled, ko(3, "test")])
    assert advice is not None and [task.job for task in advice.failures] == [2, 3]


def test_k_is_the_number_of_jobs():
    uses = [ok(1, "scrub"), ko(2, "test"), ko(3, "test")]
    assert wipe_advice(uses, k=3) is None
    assert wipe_advice([*uses, ko(4, "test")], k=3) is not None
    assert wipe_advice(uses[:2], k=1) is not None
    with pytest.raises(ValueError, match="k must be at least 1"):
        wipe_advice(uses, k=0)


def test_failures_right_after_a_wipe_blame_no_one():
    # 2's failing test is an earlier use, but only one other job failed after it.
    assert wipe_advice([ko(2, "test"), ko(3, "test")]) is None
    assert wipe_advice([]) is None


def test_a_failing_task_can_be_the_culprit_of_those_after_it():
    uses = [ok(1, "build"), ko(2, "scrub"), ko(3, "test"), ko(4, "test")]
    advice = wipe_advice(uses)
    assert advice is not None and advice.suspect == uses[1] and advice.suspects[1] == uses[0]
    assert [task.job for task in advice.failures] == [3, 4]


def test_an_administrators_command_is_a_suspect():
    command = Use(UseKind.EXEC, use_id=5, actor="cli alice")
    advice = wipe_advice([ok(1, "build"), command, ko(2, "test"), ko(3, "test")])
    assert advice is not None and advice.suspect == command
    assert advice.reason == "tasks of 2 jobs (2, 3) failed in a row after exec#5"


def test_a_blame_ranking_orders_the_suspects():
    uses = [ok(1, "build"), ok(1, "scrub"), ko(2, "test"), ko(3, "test")]
    ranking = [Suspect("step", "build", 1, 10, 1, 0.8), Suspect("step", "scrub", 1, 1, 5, 0.2)]
    advice = wipe_advice(uses, ranking=ranking)
    assert advice is not None and advice.suspects == (uses[0], uses[1])


@given(st.lists(use_strategy(outcome=True), max_size=20), st.integers(1, 3))
def test_the_advice_is_what_the_rule_says(uses, k):
    advice = wipe_advice(uses, k=k)
    verdicts = [use for use in uses if use.failed or use.succeeded]
    if advice is None:
        return
    assert verdicts and verdicts[-1].failed
    assert all(task.failed for task in advice.failures)
    assert len({task.job for task in advice.failures}) >= k
    positions = {id(use): i for i, use in enumerate(uses)}
    for suspect in advice.suspects:
        assert suspect in uses
    suspect = advice.suspect
    assert all(task.job != suspect.job for task in advice.failures)
    assert all(positions[id(task)] > positions[id(suspect)] for task in advice.failures)
    # No success since the first of those failures.
    first = min(positions[id(task)] for task in advice.failures)
    assert not any(use.succeeded for use in uses[first:])
