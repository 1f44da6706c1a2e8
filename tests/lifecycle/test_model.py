"""A use of a VM: what each kind must and must not carry, and a lifecycle seen at a given moment."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from testlab.lifecycle.model import MAX_ID, Lifecycle, Use, UseKind, at_moment

T0 = datetime(2024, 5, 1, 12, 0)


def minutes(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def test_in_job_and_out_of_job_uses():
    use = Use(UseKind.PREPARE, job=12, step="setup", task=40, outcome="completed")
    assert use.in_job and use.succeeded and not use.failed
    out = Use(UseKind.EXEC, use_id=7, actor="cli alice")
    assert not out.in_job and not out.failed and not out.succeeded
    for outcome, failed in [("failed", True), ("timeout", True), ("boterror", True), ("canceled", False)]:
        assert Use(UseKind.TASK, job=1, step="a", outcome=outcome).failed is failed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "reboot", "use_id": 1}, "unknown use kind 'reboot'"),
        ({"kind": UseKind.TASK, "step": "a"}, "a task use needs a job and a step"),
        ({"kind": UseKind.PREPARE, "job": 1}, "a prepare use needs a job and a step"),
        ({"kind": UseKind.TASK, "job": 1, "step": "a b"}, "bad step name 'a b'"),
        ({"kind": UseKind.TASK, "job": 1, "step": "a" * 101}, "at most 100 characters"),
        ({"kind": UseKind.TASK, "job": -1, "step": "a"}, "bad job id -1"),
        ({"kind": UseKind.TASK, "job": MAX_ID + 1, "step": "a"}, "bad job id"),
        ({"kind": UseKind.TASK, "job": True, "step": "a"}, "bad job id True"),
        ({"kind": UseKind.EXEC}, "an out-of-job use (exec) needs its own id"),
        ({"kind": UseKind.EXEC, "use_id": 1, "job": 3}, "belongs to no job, step or task"),
        ({"kind": UseKind.POWER_CYCLE, "use_id": 1, "outcome": "failed"}, "has no task outcome"),
        ({"kind": UseKind.TASK, "job": 1, "step": "a", "outcome": "exploded"}, "unknown task outcome"),
    ],
)
def test_nonsense_is_refused(fields, message):
    with pytest.raises(ValueError) as caught:
        Use(**fields)
    assert message in str(caught.value)


def test_at_moment_sees_what_had_begun_and_marks_what_still_ran():
    uses = [
        Use(UseKind.TASK, job=1, step="build", started=minutes(0), ended=minutes(10), outcome="completed"),
        Use(UseKind.TASK, job=2, step="build", started=minutes(5), ended=minutes(30), outcome="failed"),
        Use(UseKind.EXEC, use_id=9, started=minutes(12), ended=minutes(13)),
        Use(UseKind.TASK, job=3, step="test", started=minutes(20)),
    ]
    seen = at_moment(uses, minutes(12))
    assert [(use.job, use.use_id, use.concurrent) for use in seen] == [
        (1, None, False),
        (2, None, True),
        (None, 9, True),
    ]
    assert [use.concurrent for use in at_moment(uses, minutes(40))] == [False, False, False, True]
    assert at_moment(uses, minutes(-1)) == []
    # Nothing else changes: the outcome known later stays (a string shows no outcomes anyway).
    assert seen[1].outcome == "failed"


def test_a_lifecycle_holds_its_uses_as_a_tuple():
    lifecycle = Lifecycle("build1", [Use(UseKind.TASK, job=1, step="a")])  # type: ignore[arg-type]
    assert isinstance(lifecycle.uses, tuple) and lifecycle.closed is None
