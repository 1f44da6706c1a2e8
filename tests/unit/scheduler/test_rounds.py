"""plan_round: round after round it gives exactly plan()'s plan, re-planning only what changed."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.scheduler import HostLimits, PowerOff, Revert, Snapshot, SnapshotError, StartTask, TaskView, plan
from testlab.scheduler.rounds import plan_round
from tests.unit.scheduler import apply, lab, pool_task, task, vm
from tests.unit.scheduler.test_properties import PROPERTY_SETTINGS, STATUSES, labs


def _next_round(snapshot: Snapshot, draw: st.DrawFn) -> Snapshot:
    """What the engine could read next: the plan carried out (or, at times, its write lost), and a
    VM or two changed by the outside world (a task ended, an administrator); unchanged views are the
    same objects, as the engine passes them."""
    result = plan(snapshot)
    vms = dict(snapshot.vms)
    tasks = snapshot.tasks
    if draw(st.booleans()):  # the plan was recorded and its operations are in flight
        after = apply(snapshot, result)
        acted = {a.vm for a in result.actions} | {getattr(a, "displace", None) for a in result.actions}
        for name in acted & vms.keys():
            vms[name] = dataclasses.replace(vms[name], status=after[name], busy=True)
        started = {a.task_id for a in result.actions if isinstance(a, StartTask)}
        tasks = tuple(t for t in tasks if t.id not in started)
    names = sorted(vms)
    for name in draw(st.lists(st.sampled_from(names), max_size=2)):
        vms[name] = dataclasses.replace(
            vms[name], status=draw(st.sampled_from(STATUSES)), busy=draw(st.booleans())
        )
    if tasks and draw(st.booleans()):
        tasks = tasks[1:]
    if draw(st.booleans()):  # a job submitted: a task somewhere in the queue, on a VM or of a pool
        pools = [t.candidates for t in tasks if t.vm is None] or [tuple(names[:2])]  # one tuple a pool
        pinned = draw(st.booleans())
        new = TaskView(
            id=1000 + int(snapshot.now),
            vm=draw(st.sampled_from([*names, "ghost"])) if pinned else None,
            job_id=draw(st.integers(1, 6)),
            priority=draw(st.integers(0, 3)),
            step_id=draw(st.integers(1, 3)),
            stage=draw(st.integers(0, 1)),
            candidates=() if pinned else draw(st.sampled_from(pools)),
        )
        at = draw(st.integers(0, len(tasks)))
        tasks = (*tasks[:at], new, *tasks[at:])
    if len(tasks) > 1 and draw(st.integers(0, 9)) == 0:  # the queue reordered
        tasks = tasks[::-1]
    return Snapshot(snapshot.now + 1, snapshot.hosts, vms, tasks)


@PROPERTY_SETTINGS
@given(labs(), st.data())
def test_every_round_plans_what_plan_would_on_the_whole_lab(snapshot: Snapshot, data: st.DataObject) -> None:
    carried = None
    for _ in range(5):
        expected = plan(snapshot)
        decided, carried = plan_round(snapshot, carried)
        assert decided.actions == expected.actions
        assert dict(decided.blocked) == dict(expected.blocked)
        snapshot = _next_round(snapshot, data.draw)


def _two_hosts() -> Snapshot:
    return lab(
        [vm("a", "running", busy=True), vm("b", "maintenance", host="h2"), vm("c", host="h2")],
        [task(1, "a"), task(2, "b")],
        limits=HostLimits(max_active=2, max_running=1, max_reverting=1, max_ready_when_idle=0),
    )


def test_a_host_that_did_not_change_and_had_nothing_to_do_is_carried_over():
    first = _two_hosts()
    decided, carried = plan_round(first)
    assert decided.actions == ()
    assert decided.blocked == {"b": "vm b is in maintenance"}
    # h1's running VM ends its task; h2 is the same as before
    second = dataclasses.replace(first, vms={**first.vms, "a": vm("a", "dirty")}, tasks=first.tasks[1:])
    decided, again = plan_round(second, carried)
    assert decided == plan(second)
    assert again.quiet["h2"] is carried.quiet["h2"]  # not planned again: its earlier result kept
    assert decided.actions == (PowerOff(vm="a", reason="unneeded"),)
    assert "h1" not in again.quiet  # it acted
    assert decided.blocked == {"b": "vm b is in maintenance"}


def test_actions_not_carried_out_are_decided_again():
    snapshot = lab([vm("a")], [task(1, "a")])
    first, carried = plan_round(snapshot)
    assert first.actions == (Revert(vm="a"),)
    second, carried = plan_round(snapshot, carried)  # the revert's record was lost: same inputs
    assert second.actions == first.actions
    assert "h1" not in carried.quiet


def test_hosts_linked_by_a_pool_are_planned_together():
    pool = ("a", "c")
    snapshot = lab([vm("a", "idle"), vm("c", "idle", host="h2")], [pool_task(1, pool), pool_task(2, pool)])
    decided, carried = plan_round(snapshot)
    assert decided == plan(snapshot)
    assert {a.vm for a in decided.actions} == {"a", "c"}
    assert list(carried.quiet) == []


def test_a_task_for_an_unknown_vm_is_reported_every_round():
    snapshot = lab([vm("a", "idle")], [task(1, "ghost")])
    decided, carried = plan_round(snapshot)
    assert decided.blocked == {"ghost": "vm ghost does not exist"}
    decided, _ = plan_round(snapshot, carried)
    assert decided.blocked == {"ghost": "vm ghost does not exist"}


def test_a_queue_reordered_is_planned_again():
    """Queue order alone can decide whether a host has anything to do: here the first task wants a
    clean VM, which this host cannot revert; once the other task comes first, it starts."""
    clean = dataclasses.replace(task(1, "a"), clean=True)
    snapshot = lab(
        [vm("a", "idle", used=True)], [clean, task(2, "a")], limits=HostLimits(max_reverting=0, max_running=1)
    )
    decided, carried = plan_round(snapshot)
    assert decided.actions == ()
    reordered = dataclasses.replace(snapshot, tasks=snapshot.tasks[::-1])
    decided, _ = plan_round(reordered, carried)
    assert decided == plan(reordered)
    assert decided.actions == (StartTask(task_id=2, vm="a"),)


def test_a_malformed_snapshot_is_refused_as_plan_refuses_it():
    good = lab([vm("a", "idle"), vm("b", host="h2")], [task(1, "a")])
    _, carried = plan_round(good)
    unknown_host = dataclasses.replace(good, vms={**good.vms, "c": vm("c", host="h9")})
    bad_status = dataclasses.replace(good, vms={**good.vms, "b": vm("b", "melted", host="h2")})
    for snapshot in (unknown_host, bad_status):
        for previous in (None, carried):
            with pytest.raises(SnapshotError) as refused:
                plan_round(snapshot, previous)
            with pytest.raises(SnapshotError) as expected:
                plan(snapshot)
            assert str(refused.value) == str(expected.value)
