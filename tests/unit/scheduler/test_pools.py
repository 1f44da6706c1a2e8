"""Pool targeting: tasks that may run on any of several VMs (docs/scheduler.md, "Pools")."""

from __future__ import annotations

from testlab.scheduler import HostLimits, HostView, Revert, StartTask, plan
from tests.unit.scheduler import check_plan, lab, pool_task, task, vm

ROOMY = HostLimits(max_active=4, max_running=4, max_reverting=4, max_reverts_while_running=4)


def actions(snapshot):
    result = plan(snapshot)
    check_plan(snapshot, result)
    return list(result.actions)


def test_pool_tasks_start_on_distinct_idle_vms_and_the_rest_wait():
    pool = ("a", "b")
    snapshot = lab(
        [vm("a", "idle"), vm("b", "idle")], [pool_task(n, pool, job=1) for n in (1, 2, 3)], limits=ROOMY
    )
    assert actions(snapshot) == [StartTask(task_id=1, vm="a"), StartTask(task_id=2, vm="b")]


def test_an_idle_vm_is_preferred_to_one_that_needs_a_revert():
    pool = ("a", "b")
    snapshot = lab([vm("a", "off"), vm("b", "idle")], [pool_task(1, pool)], limits=ROOMY)
    assert actions(snapshot) == [StartTask(task_id=1, vm="b")]


def test_vms_are_prepared_for_pool_tasks_beyond_the_idle_ones():
    pool = ("a", "b", "c")
    snapshot = lab(
        [vm("a", "idle"), vm("b", "off"), vm("c", "off")],
        [pool_task(n, pool, job=1) for n in (1, 2)],
        limits=ROOMY,
    )
    assert actions(snapshot) == [StartTask(task_id=1, vm="a"), Revert(vm="b", reason="needed")]


def test_pool_tasks_spread_over_the_hosts():
    pool = ("a1", "a2", "b1", "b2")
    vms = [vm("a1", "idle", host="h1"), vm("a2", "idle", host="h1")]
    vms += [vm("b1", "idle", host="h2"), vm("b2", "idle", host="h2")]
    snapshot = lab(vms, [pool_task(n, pool, job=1) for n in (1, 2)], limits=ROOMY)
    started = {a.vm for a in actions(snapshot)}
    assert {name[0] for name in started} == {"a", "b"}, started


def test_a_pinned_task_ahead_keeps_its_vm_and_a_later_one_is_avoided():
    pool = ("a", "b", "c")
    snapshot = lab(
        [vm("a", "idle"), vm("b", "idle"), vm("c", "idle")],
        [task(1, "a", priority=1), pool_task(2, pool, priority=2), task(3, "b", priority=3)],
        limits=ROOMY,
    )
    assert actions(snapshot) == [
        StartTask(task_id=1, vm="a"),
        StartTask(task_id=2, vm="c"),
        StartTask(task_id=3, vm="b"),
    ]


def test_a_next_step_pool_task_prepares_a_vm_rather_than_hold_an_idle_one():
    pool = ("a", "b")
    snapshot = lab([vm("a", "idle"), vm("b", "off")], [pool_task(1, pool, stage=1)], limits=ROOMY)
    assert actions(snapshot) == [Revert(vm="b", reason="next")]


def test_a_pool_no_vm_can_serve_is_blocked_with_its_vms_reasons():
    pool = ("a", "b")
    snapshot = lab([vm("a", "offline"), vm("b", "maintenance")], [pool_task(1, pool)], limits=ROOMY)
    result = plan(snapshot)
    assert result.actions == ()
    assert result.blocked == {"a": "vm a is offline", "b": "vm b is in maintenance"}


def test_a_busy_pool_waits_without_being_blocked():
    pool = ("a",)
    snapshot = lab([vm("a", "running")], [pool_task(1, pool)], limits=ROOMY)
    result = plan(snapshot)
    assert result.actions == () and result.blocked == {}


def test_pool_planning_stays_within_the_host_limits():
    pool = tuple(f"v{n}" for n in range(6))
    snapshot = lab(
        [vm(name, "off") for name in pool],
        [pool_task(n, pool, job=1) for n in range(1, 7)],
        hosts=[HostView(name="h1", limits=HostLimits(max_active=2, max_running=2, max_reverting=1))],
    )
    assert actions(snapshot) == [Revert(vm="v0", reason="needed")]
