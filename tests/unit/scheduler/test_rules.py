"""One small test per scheduling rule (see docs/scheduler.md)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from testlab.scheduler import (
    HostLimits,
    HostView,
    PowerOff,
    Revert,
    SnapshotError,
    StartTask,
    plan,
)
from tests.unit.scheduler import check_plan, lab, task, vm

ROOMY = HostLimits(max_active=4, max_running=2, max_reverting=2, max_reverts_while_running=2)


def actions(snapshot):
    result = plan(snapshot)
    check_plan(snapshot, result)
    return list(result.actions)


# --- starting tasks ---------------------------------------------------------------------------


def test_runnable_task_starts_on_its_idle_vm():
    assert actions(lab([vm("a", "idle")], [task(1, "a")])) == [StartTask(task_id=1, vm="a")]


def test_next_step_task_never_starts():
    assert actions(lab([vm("a", "idle")], [task(1, "a", stage=1)])) == []


def test_busy_idle_vm_gets_no_task():
    assert actions(lab([vm("a", "idle", busy=True)], [task(1, "a")])) == []


def test_one_task_per_vm_per_plan_the_first_in_queue_order():
    snap = lab([vm("a", "idle")], [task(2, "a", priority=5), task(1, "a", priority=9)], limits=ROOMY)
    assert actions(snap) == [StartTask(task_id=2, vm="a")]


def test_running_limit_starts_the_most_urgent_first():
    snap = lab([vm("a", "idle"), vm("b", "idle")], [task(1, "a", priority=9), task(2, "b", priority=1)])
    assert actions(snap) == [StartTask(task_id=2, vm="b")]


# A host that never reverts beside a running task (slow disks).
CAUTIOUS = HostLimits(max_reverts_while_running=0)


def test_no_start_while_reverts_exceed_what_running_tolerates():
    snap = lab([vm("a", "idle"), vm("b", "reverting", busy=True)], [task(1, "a")], limits=CAUTIOUS)
    assert actions(snap) == []


def test_start_allowed_when_reverts_within_reverts_while_running():
    limits = HostLimits(max_active=3, max_reverts_while_running=1)
    snap = lab([vm("a", "idle"), vm("b", "reverting", busy=True)], [task(1, "a")], limits=limits)
    assert actions(snap) == [StartTask(task_id=1, vm="a")]


def test_sleeping_vm_counts_as_reverting():
    snap = lab([vm("a", "idle"), vm("b", "sleeping", busy=True)], [task(1, "a")], limits=CAUTIOUS)
    assert actions(snap) == []


# --- preparing VMs ----------------------------------------------------------------------------


def test_off_vm_needed_now_is_reverted():
    assert actions(lab([vm("a")], [task(1, "a")])) == [Revert(vm="a", reason="needed")]


def test_dirty_vm_needed_now_is_reverted_not_powered_off():
    assert actions(lab([vm("a", "dirty")], [task(1, "a")])) == [Revert(vm="a", reason="needed")]


def test_next_step_vm_is_prepared_ahead():
    assert actions(lab([vm("a")], [task(1, "a", stage=1)])) == [Revert(vm="a", reason="next")]


def test_runnable_needs_come_before_next_step_needs():
    snap = lab([vm("a"), vm("b")], [task(1, "a", stage=1, priority=1), task(2, "b", priority=9)])
    assert actions(snap) == [Revert(vm="b", reason="needed")]


def test_reverting_limit():
    snap = lab(
        [vm("a"), vm("b"), vm("c", "reverting", busy=True)], [task(1, "a"), task(2, "b")], limits=ROOMY
    )
    assert actions(snap) == [Revert(vm="a", reason="needed")]


def test_no_revert_while_a_vm_runs_on_a_cautious_host():
    snap = lab([vm("a"), vm("b", "running", busy=True)], [task(1, "a")], limits=CAUTIOUS)
    assert actions(snap) == []


def test_by_default_the_next_vm_is_prepared_while_one_runs():
    snap = lab([vm("a"), vm("b", "running", busy=True)], [task(1, "a")])
    assert actions(snap) == [Revert(vm="a", reason="needed")]


def test_no_revert_after_starting_a_task_in_the_same_plan():
    snap = lab([vm("a", "idle"), vm("b")], [task(1, "a"), task(2, "b")], limits=CAUTIOUS)
    assert actions(snap) == [StartTask(task_id=1, vm="a")]


def test_busy_off_vm_is_left_alone():
    assert actions(lab([vm("a", busy=True)], [task(1, "a")])) == []


# --- sacrifice --------------------------------------------------------------------------------


def test_full_host_sacrifices_an_unneeded_idle_vm():
    # a running VM blocks reverts by default: allow one to isolate the sacrifice rule
    snap = lab(
        [vm("a"), vm("b", "idle"), vm("c", "running", busy=True)],
        [task(1, "a")],
        limits=HostLimits(max_reverts_while_running=1),
    )
    assert actions(snap) == [PowerOff(vm="b", reason="sacrifice")]


def test_revert_waits_until_the_sacrificed_vm_is_off():
    """The limit holds even while the power-off runs: no second sacrifice, no revert yet."""
    limits = HostLimits(max_reverts_while_running=1)
    powering_off = lab(
        [vm("a"), vm("b", "dirty", busy=True), vm("c", "running", busy=True)], [task(1, "a")], limits=limits
    )
    assert actions(powering_off) == []
    room_made = lab([vm("a"), vm("b", "off"), vm("c", "running", busy=True)], [task(1, "a")], limits=limits)
    assert actions(room_made) == [Revert(vm="a", reason="needed")]


def test_dirty_lamb_goes_before_idle_lamb():
    snap = lab([vm("a"), vm("b", "idle"), vm("c", "dirty")], [task(1, "a")])
    assert actions(snap)[:1] == [PowerOff(vm="c", reason="sacrifice")]


def test_sleeping_lamb_goes_before_idle_lamb():
    snap = lab(
        [vm("a"), vm("b", "idle"), vm("c", "sleeping")], [task(1, "a")], limits=HostLimits(max_reverting=2)
    )
    assert actions(snap) == [PowerOff(vm="c", reason="sacrifice")]


def test_least_useful_idle_lamb_goes_first():
    snap = lab(
        [vm("a"), vm("b", "idle"), vm("c", "idle")],
        [task(1, "a", priority=1), task(2, "b", stage=1, priority=2)],
    )
    assert actions(snap) == [PowerOff(vm="c", reason="sacrifice")]


def test_never_sacrifice_a_vm_needed_more_urgently():
    snap = lab(
        [vm("a"), vm("b", "idle", busy=False), vm("c", "running", busy=True)],
        [task(1, "b", priority=1), task(2, "a", priority=2)],
        limits=HostLimits(max_reverts_while_running=1),
    )
    # b cannot start (c holds the only running slot) but is more urgent than a: it stays
    assert actions(snap) == []


def test_busy_vm_is_never_a_lamb():
    snap = lab([vm("a"), vm("b", "idle", busy=True), vm("c", "dirty", busy=True)], [task(1, "a")])
    assert actions(snap) == []


def test_over_a_lowered_active_limit_no_new_vm_is_powered_on():
    snap = lab(
        [vm("a"), vm("b", "idle"), vm("c", "idle"), vm("d", "idle")],
        [task(1, "a")],
        limits=HostLimits(max_active=2),
    )
    assert actions(snap) == []


# --- keeping VMs ready when nothing is queued -------------------------------------------------


def test_idle_host_keeps_base_vms_ready_before_extra_ones():
    snap = lab(
        [vm("x", role="extra", recent_demand=50), vm("b1"), vm("b2")], limits=HostLimits(max_reverting=3)
    )
    assert actions(snap) == [Revert(vm="b1", reason="ready"), Revert(vm="b2", reason="ready")]


def test_idle_host_prefers_recently_demanded_vms():
    snap = lab([vm("a", recent_demand=1), vm("b", recent_demand=7)], limits=HostLimits(max_ready_when_idle=1))
    assert actions(snap) == [Revert(vm="b", reason="ready")]


def test_keep_ready_respects_max_ready_when_idle():
    assert actions(lab([vm("a", "idle"), vm("b", "idle"), vm("c")])) == []


def test_keep_ready_never_sacrifices_idle_vms():
    limits = HostLimits(max_active=1, max_ready_when_idle=2)
    assert actions(lab([vm("a", "idle", role="extra"), vm("b")], limits=limits)) == []


def test_keep_ready_may_sacrifice_a_dirty_vm():
    limits = HostLimits(max_active=1, max_ready_when_idle=2)
    snap = lab([vm("a", "dirty", role="extra"), vm("b")], limits=limits)
    assert actions(snap) == [PowerOff(vm="a", reason="sacrifice")]


def test_no_keep_ready_on_a_host_with_queued_work():
    snap = lab([vm("a", "running", busy=True), vm("b")], [task(1, "a", stage=1)], limits=ROOMY)
    assert actions(snap) == []


def test_blocked_tasks_do_not_stop_a_host_keeping_vms_ready():
    snap = lab([vm("a", "offline"), vm("b")], [task(1, "a")])
    assert actions(snap) == [Revert(vm="b", reason="ready")]


def test_other_hosts_keep_ready_independently():
    snap = lab([vm("a", host="h1"), vm("b", host="h2")], [task(1, "a")])
    assert actions(snap) == [Revert(vm="a", reason="needed"), Revert(vm="b", reason="ready")]


# --- shared domains ---------------------------------------------------------------------------


def test_free_shared_domain_can_be_reverted():
    snap = lab([vm("a", domain="d"), vm("b", domain="d")], [task(1, "b")])
    assert actions(snap) == [Revert(vm="b", reason="needed")]


def test_idle_owner_is_displaced_for_a_runnable_task():
    snap = lab([vm("a", "idle", domain="d"), vm("b", domain="d")], [task(1, "b")])
    assert actions(snap) == [Revert(vm="b", displace="a", reason="needed")]


def test_dirty_owner_is_displaced_for_a_runnable_task():
    snap = lab([vm("a", "dirty", domain="d"), vm("b", domain="d")], [task(1, "b")])
    assert actions(snap) == [Revert(vm="b", displace="a", reason="needed")]


def test_no_displacement_for_a_next_step():
    snap = lab([vm("a", "idle", domain="d"), vm("b", domain="d")], [task(1, "b", stage=1)])
    assert actions(snap) == []


def test_no_displacement_to_keep_ready():
    snap = lab([vm("a", "idle", domain="d", role="extra"), vm("b", domain="d")])
    assert actions(snap) == []


def test_running_owner_is_never_displaced():
    snap = lab([vm("a", "running", domain="d", busy=True), vm("b", domain="d")], [task(1, "b")], limits=ROOMY)
    assert actions(snap) == []


def test_busy_owner_is_never_displaced():
    snap = lab([vm("a", "dirty", domain="d", busy=True), vm("b", domain="d")], [task(1, "b")])
    assert actions(snap) == []


def test_owner_needed_more_urgently_is_not_displaced():
    snap = lab(
        [vm("a", "idle", domain="d"), vm("b", domain="d"), vm("r", "running", busy=True)],
        [task(1, "a", priority=1), task(2, "b", priority=2)],
        limits=HostLimits(max_active=3, max_reverts_while_running=1),
    )
    assert actions(snap) == []


def test_owner_in_maintenance_is_never_displaced_and_blocks():
    snap = lab([vm("a", "maintenance", domain="d"), vm("b", domain="d")], [task(1, "b")])
    result = plan(snap)
    assert result.actions == ()
    assert result.blocked == {"b": "domain d on host h1 is held by vm a (vm a is in maintenance)"}


def test_never_two_vms_of_one_domain_in_one_plan():
    snap = lab([vm("a", domain="d"), vm("b", domain="d")], [task(1, "a"), task(2, "b")], limits=ROOMY)
    assert actions(snap) == [Revert(vm="a", reason="needed")]


def test_same_domain_name_on_other_hosts_is_another_domain():
    snap = lab([vm("a", domain="d", host="h1"), vm("b", domain="d", host="h2")], [task(1, "a"), task(2, "b")])
    assert actions(snap) == [Revert(vm="a", reason="needed"), Revert(vm="b", reason="needed")]


def test_contested_domain_only_gets_its_dirty_vms_powered_off():
    snap = lab(
        [vm("a", "idle", domain="d"), vm("b", "dirty", domain="d"), vm("c", domain="d")],
        [task(1, "a"), task(2, "b"), task(3, "c")],
        limits=ROOMY,
    )
    assert actions(snap) == [PowerOff(vm="b", reason="unneeded")]


# --- powering off -----------------------------------------------------------------------------


def test_unneeded_dirty_vm_is_powered_off():
    snap = lab([vm("a", "dirty"), vm("b", "idle")], [task(1, "b")])
    assert actions(snap) == [StartTask(task_id=1, vm="b"), PowerOff(vm="a", reason="unneeded")]


def test_dirty_vm_waiting_for_capacity_is_kept():
    snap = lab([vm("a", "dirty"), vm("b", "running", busy=True)], [task(1, "a")], limits=CAUTIOUS)
    assert actions(snap) == []


def test_dirty_vm_being_powered_off_is_left_alone():
    assert actions(lab([vm("a", "dirty", busy=True)])) == []


def test_idle_vm_is_not_churned():
    snap = lab([vm("a", "idle"), vm("b", "idle"), vm("c", "idle")], limits=HostLimits(max_active=4))
    assert actions(snap) == []


# --- blocked tasks and untouchable VMs --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "host_up", "reason"),
    [
        ({"status": "maintenance"}, True, "vm a is in maintenance"),
        ({"status": "offline"}, True, "vm a is offline"),
        ({"role": "retired"}, True, "vm a is retired"),
        ({"role": "deleted"}, True, "vm a is deleted"),
        ({"status": "idle", "maintenance_requested": True}, True, "maintenance requested on vm a"),
        ({"status": "idle"}, False, "host h1 is down"),
    ],
)
def test_blocked_vm_is_reported_and_untouched(kwargs, host_up, reason):
    snap = lab([vm("a", **kwargs)], [task(1, "a")], hosts=[HostView("h1", up=host_up)])
    result = plan(snap)
    assert result.actions == ()
    assert result.blocked == {"a": reason}


def test_task_for_an_unknown_vm_is_blocked():
    assert plan(lab([vm("a")], [task(1, "ghost")])).blocked == {"ghost": "vm ghost does not exist"}


def test_host_allowing_no_running_vm_blocks_its_tasks():
    snap = lab([vm("a", "idle")], [task(1, "a")], limits=HostLimits(max_running=0))
    assert plan(snap).blocked == {"a": "host h1 allows no running vm (max_running is 0)"}


def test_waiting_for_capacity_is_not_blocked():
    snap = lab([vm("a"), vm("b", "running", busy=True)], [task(1, "a")])
    assert plan(snap).blocked == {}


def test_untouchable_dirty_vms_are_not_powered_off():
    snap = lab(
        [
            vm("a", "dirty", role="retired"),
            vm("b", "dirty", maintenance_requested=True),
            vm("c", "dirty", host="h2"),
        ],
        hosts=[HostView("h1"), HostView("h2", up=False)],
    )
    assert actions(snap) == []


# --- purity and bad input ---------------------------------------------------------------------


def test_plan_is_pure_and_deterministic():
    snap = lab(
        [vm("a"), vm("b", "idle", domain="d"), vm("c", domain="d"), vm("e", "dirty")],
        [task(1, "a"), task(2, "c"), task(3, "b", stage=1)],
        limits=ROOMY,
    )
    before = copy.deepcopy(snap)
    first = plan(snap)
    assert snap == before
    assert plan(snap) == first


@pytest.mark.parametrize(
    ("snap", "message"),
    [
        (lab([vm("a", "flying")]), "vm a: unknown status 'flying'"),
        (lab([vm("a", role="boss")]), "vm a: unknown role 'boss'"),
        (lab([vm("a", host="h9")], hosts=[HostView("h1")]), "vm a: unknown host 'h9'"),
        (lab([vm("a")], [task(7, "a", stage=2)]), "task 7: stage must be 0 or 1, got 2"),
        (
            lab([vm("a")], limits=HostLimits(max_active=-1)),
            "host h1: max_active must be a non-negative integer",
        ),
    ],
)
def test_bad_snapshot_is_a_one_line_error(snap, message):
    with pytest.raises(SnapshotError) as info:
        plan(snap)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --- preparing ahead switched off (what the simulator's no-prepare policy measures) ------------


def test_without_prepare_ahead_a_next_step_vm_is_not_reverted():
    snap = lab([vm("a")], [task(1, "a", stage=1)])
    result = plan(snap, prepare_ahead=False)
    check_plan(snap, result)
    assert result.actions == ()


def test_without_prepare_ahead_an_idle_host_keeps_nothing_ready():
    assert plan(lab([vm("a"), vm("b")]), prepare_ahead=False).actions == ()


def test_without_prepare_ahead_runnable_needs_are_still_served():
    snap = lab([vm("a", "dirty"), vm("b")], [task(1, "a"), task(2, "b", stage=1)], limits=ROOMY)
    assert plan(snap, prepare_ahead=False).actions == (Revert(vm="a", reason="needed"),)


# --- a host short of disk -----------------------------------------------------------------------


def test_host_short_of_disk_gets_no_revert_but_its_idle_vms_still_run():
    full = HostView(name="h1", limits=ROOMY, no_reverts="0.2 GiB of free disk, below its 5.0 GiB")
    snapshot = lab(
        [vm("a", "idle"), vm("b", "off"), vm("c", "dirty")],
        [task(1, "a"), task(2, "b"), task(3, "c")],
        hosts=[full],
    )
    result = plan(snapshot)
    check_plan(snapshot, result)
    # The dirty VM cannot be reverted for its task: it is powered off rather than left running.
    assert list(result.actions) == [StartTask(task_id=1, vm="a"), PowerOff(vm="c", reason="unneeded")]
    assert result.blocked == {
        "b": "host h1 takes no new revert: 0.2 GiB of free disk, below its 5.0 GiB",
        "c": "host h1 takes no new revert: 0.2 GiB of free disk, below its 5.0 GiB",
    }


def test_host_short_of_disk_keeps_nothing_ready():
    full = HostView(name="h1", limits=ROOMY, no_reverts="disk nearly full")
    assert actions(lab([vm("a", "off"), vm("b", "off")], hosts=[full])) == []


# --- reused VMs and clean steps (docs/lifecycle.md) -------------------------------------------


def _clean(task_view):
    return dataclasses.replace(task_view, clean=True)


def test_a_reused_vm_runs_the_next_task_as_it_is():
    assert actions(lab([vm("a", "idle", used=True)], [task(1, "a")])) == [StartTask(task_id=1, vm="a")]


def test_a_clean_task_gets_its_used_vm_reverted_first():
    assert actions(lab([vm("a", "idle", used=True)], [_clean(task(1, "a"))])) == [
        Revert(vm="a", reason="needed")
    ]


def test_a_clean_task_starts_on_a_vm_unused_since_its_wipe():
    assert actions(lab([vm("a", "idle")], [_clean(task(1, "a"))])) == [StartTask(task_id=1, vm="a")]
