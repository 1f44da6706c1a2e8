"""The queue heads: the engine passes plan() only the tasks a round can act on, and the plan is the
same as on the whole queue."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given

from testlab.scheduler import Snapshot, SnapshotError, plan, queue_heads
from tests.unit.scheduler import lab, pool_task, task, vm
from tests.unit.scheduler.test_properties import PROPERTY_SETTINGS, labs


def _ids(tasks) -> list[int]:
    return [t.id for t in tasks]


@PROPERTY_SETTINGS
@given(labs(max_tasks=60))
def test_the_plan_on_the_heads_is_the_plan_on_the_whole_queue(snapshot: Snapshot) -> None:
    heads = queue_heads(snapshot.tasks)
    assert plan(dataclasses.replace(snapshot, tasks=heads)) == plan(snapshot)
    assert queue_heads(heads) == heads


def test_a_pinned_vm_keeps_its_first_runnable_task_and_a_next_step_task_only_ahead_of_it():
    tasks = [task(1, "a"), task(2, "a", stage=1), task(3, "b", stage=1), task(4, "b", stage=1), task(5, "b")]
    assert _ids(queue_heads(tasks)) == [1, 3, 5]


def test_a_pool_keeps_one_task_per_distinct_candidate_and_stage():
    pool = ("a", "b", "a")
    other = ("c",)
    tasks = [pool_task(n, pool) for n in (1, 2, 3)]
    tasks += [pool_task(n, pool, stage=1) for n in (4, 5, 6)]
    tasks += [pool_task(n, other) for n in (7, 8)]
    assert _ids(queue_heads(tasks)) == [1, 2, 4, 5, 7]


def test_a_pool_without_candidates_keeps_one_task_so_the_queue_does_not_look_empty():
    assert _ids(queue_heads([pool_task(1, ()), pool_task(2, ())])) == [1]


def test_a_task_with_an_impossible_stage_is_kept_so_plan_still_rejects_it():
    snapshot = lab([vm("a")], [task(1, "a"), task(2, "a", stage=2)])
    heads = dataclasses.replace(snapshot, tasks=queue_heads(snapshot.tasks))
    with pytest.raises(SnapshotError, match="task 2"):
        plan(heads)
