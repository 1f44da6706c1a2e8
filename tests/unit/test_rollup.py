"""The roll-up rules of mission.md, checked by example and over arbitrary mixes of child statuses."""

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.domain.rollup import PRECEDENCE, is_final, rollup, timestamps
from testlab.domain.statuses import TaskStatus as S

statuses = st.sampled_from(sorted(S.ALL))
children = st.lists(statuses, min_size=1, max_size=12)


@pytest.mark.parametrize(
    ("kids", "expected"),
    [
        ([S.QUEUED], S.QUEUED),
        ([S.QUEUED, S.QUEUED], S.QUEUED),
        ([S.QUEUED, S.COMPLETED], S.RUNNING),
        ([S.QUEUED, S.FAILED], S.RUNNING),
        ([S.RUNNING, S.BOTERROR], S.RUNNING),
        ([S.BOTERROR, S.FAILED], S.BOTERROR),
        ([S.FAILED, S.TIMEOUT], S.FAILED),
        ([S.TIMEOUT, S.CANCELED], S.TIMEOUT),
        ([S.CANCELED, S.SKIPPED], S.CANCELED),
        ([S.SKIPPED, S.COMPLETED], S.SKIPPED),
        ([S.COMPLETED, S.COMPLETED], S.COMPLETED),
    ],
)
def test_examples(kids, expected):
    assert rollup(kids) == expected


def test_all_skipped_by_a_cancel_is_canceled():
    assert rollup([S.SKIPPED, S.SKIPPED], cancel_requested=True) == S.CANCELED
    assert rollup([S.SKIPPED, S.SKIPPED]) == S.SKIPPED


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown status"):
        rollup(["bogus"])


@given(children)
def test_only_queued_is_queued_and_queued_with_anything_else_is_running(kids):
    result = rollup(kids)
    if set(kids) == {S.QUEUED}:
        assert result == S.QUEUED
    elif S.QUEUED in kids:
        assert result == S.RUNNING


@given(children)
def test_without_queued_the_most_significant_child_wins(kids):
    if S.QUEUED in kids:
        return
    result = rollup(kids)
    assert result in kids
    assert all(PRECEDENCE.index(result) <= PRECEDENCE.index(k) for k in kids)


@given(children, st.booleans())
def test_a_running_child_makes_its_parent_running(kids, canceled):
    """What the engine's roll-up after a task's start relies on (`roll_up_job(started=...)`)."""
    assert rollup([*kids, S.RUNNING], cancel_requested=canceled) == S.RUNNING


@given(children, st.booleans())
def test_result_is_a_known_status_and_order_does_not_matter(kids, canceled):
    result = rollup(kids, cancel_requested=canceled)
    assert result in S.ALL
    assert rollup(list(reversed(kids)), cancel_requested=canceled) == result


@given(children)
def test_cancel_only_turns_skipped_into_canceled(kids):
    plain, canceled = rollup(kids), rollup(kids, cancel_requested=True)
    if plain != canceled:
        assert canceled == S.CANCELED and S.SKIPPED in kids


@given(children, children)
def test_requeueing_children_makes_a_running_parent_regress_to_queued(before, _):
    requeued = [S.QUEUED] * len(before)
    assert rollup(requeued) == S.QUEUED


NOW = datetime(2026, 1, 1, 12, 0)


@given(st.lists(statuses, min_size=1, max_size=10))
def test_ended_is_set_once_and_cleared_when_leaving_final(sequence):
    started = ended = None
    first_final_at = None
    for step, status in enumerate(sequence):
        now = NOW + timedelta(seconds=step)
        started, ended = timestamps(status, started=started, ended=ended, now=now)
        if is_final(status):
            first_final_at = first_final_at or now
            assert ended == first_final_at
        else:
            first_final_at = None
            assert ended is None
        if status == S.QUEUED:
            assert started is None
        else:
            assert started is not None and started <= now
