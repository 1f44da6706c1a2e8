"""A plan re-checked against the hosts as they are when it is recorded (testlab/scheduler/room.py)."""

from __future__ import annotations

from testlab.scheduler import HostLimits, PowerOff, Revert, StartTask, VMView
from testlab.scheduler.room import still_fitting

LIMITS = {"h": HostLimits(max_active=2, max_running=1, max_reverting=1, max_reverts_while_running=1)}


def lab(**statuses: str) -> dict[str, VMView]:
    """VMs of host h, each its own domain unless its name says which (`a_d1`: domain d1)."""
    return {
        name: VMView(name=name, host="h", domain=name.split("_")[-1] if "_" in name else name, status=status)
        for name, status in statuses.items()
    }


def test_a_revert_into_a_slot_taken_since_the_plan_is_dropped() -> None:
    actions = [Revert(vm="a")]
    assert still_fitting(actions, LIMITS, lab(a="off", b="idle")) == actions
    assert still_fitting(actions, LIMITS, lab(a="off", b="idle", c="dirty")) == []


def test_actions_count_the_ones_kept_before_them() -> None:
    actions = [
        StartTask(task_id=1, vm="a"),
        StartTask(task_id=2, vm="b"),
        PowerOff(vm="c", reason="unneeded"),
    ]
    kept = still_fitting(actions, LIMITS, lab(a="idle", b="idle", c="dirty"))
    assert kept == [actions[0], actions[2]]  # one running at most; a power-off always fits


def test_a_revert_onto_a_domain_another_vm_now_holds_is_dropped() -> None:
    actions = [Revert(vm="a_d1")]
    assert still_fitting(actions, LIMITS, lab(a_d1="off", b_d1="off")) == actions
    assert still_fitting(actions, LIMITS, lab(a_d1="off", b_d1="dirty")) == []
    displacing = [Revert(vm="a_d1", displace="b_d1")]
    assert still_fitting(displacing, LIMITS, lab(a_d1="off", b_d1="dirty")) == displacing
