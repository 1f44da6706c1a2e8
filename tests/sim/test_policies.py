"""The policies on single plans: testlab's plan() decides each group of hosts linked by pools on its
own (what makes planning group by group exact), and the FIFO baseline keeps every guarantee the
real scheduler keeps."""

from __future__ import annotations

from hypothesis import given

from testlab.scheduler import HostLimits, PowerOff, Revert, Snapshot, StartTask, plan
from testlab.scheduler.groups import host_groups
from testlab.sim.fifo import fifo_plan
from testlab.sim.policies import POLICIES, get_policy
from tests.unit.scheduler import check_plan, lab, task, vm
from tests.unit.scheduler.test_properties import PROPERTY_SETTINGS, labs


def group_parts(snapshot: Snapshot) -> list[Snapshot]:
    """The snapshot cut into the groups of hosts linked by the pools queued on them."""
    vm_hosts = {name: v.host for name, v in snapshot.vms.items()}
    pools = {id(t.candidates): t.candidates for t in snapshot.tasks if t.vm is None}
    group = host_groups(snapshot.hosts, vm_hosts, pools.values())
    parts = []
    for name in sorted(set(group.values())):
        hosts = {h: view for h, view in snapshot.hosts.items() if group[h] == name}
        vms = {n: v for n, v in snapshot.vms.items() if v.host in hosts}
        tasks = tuple(
            t for t in snapshot.tasks if t.vm in vms or (t.vm is None and any(c in vms for c in t.candidates))
        )
        parts.append(Snapshot(snapshot.now, hosts, vms, tasks))
    return parts


@PROPERTY_SETTINGS
@given(labs())
def test_plan_of_the_lab_is_the_union_of_the_plans_of_its_groups(snapshot: Snapshot) -> None:
    for policy in POLICIES.values():
        whole = policy.plan(snapshot)
        parts = [policy.plan(part) for part in group_parts(snapshot)]
        assert sorted(map(repr, whole.actions)) == sorted(repr(a) for p in parts for a in p.actions)
        known = {n for n in whole.blocked if n in snapshot.vms}
        assert {n: whole.blocked[n] for n in known} == {n: r for p in parts for n, r in p.blocked.items()}


def test_a_group_is_the_hosts_linked_by_pools():
    vm_hosts = {"a": "h1", "b": "h2", "c": "h3", "d": "h4", "e": "h4"}
    groups = host_groups(["h1", "h2", "h3", "h4", "h5"], vm_hosts, [("a", "b"), ("c", "d"), ("b", "ghost")])
    assert groups == {"h1": "h1", "h2": "h1", "h3": "h3", "h4": "h3", "h5": "h5"}
    linked_late = host_groups(["h2", "h1"], {"a": "h1", "b": "h2"}, [("b",), ("b", "a")])
    assert linked_late == {"h1": "h1", "h2": "h1"}  # named by its first host, whatever the order


@PROPERTY_SETTINGS
@given(labs())
def test_fifo_keeps_every_guarantee(snapshot: Snapshot) -> None:
    check_plan(snapshot, fifo_plan(snapshot))


def test_fifo_serves_in_submission_order_whatever_the_priority():
    snap = lab([vm("a", "idle")], [task(1, "a", priority=9, job=1), task(2, "a", priority=1, job=2)])
    assert fifo_plan(snap).actions == (StartTask(task_id=1, vm="a"),)
    assert plan(snap).actions == (StartTask(task_id=2, vm="a"),)


def test_fifo_reverts_only_on_demand():
    snap = lab([vm("a"), vm("b")], [task(1, "a", stage=1)], limits=HostLimits(max_reverting=2))
    assert fifo_plan(snap).actions == ()
    assert fifo_plan(lab([vm("a"), vm("b")])).actions == ()  # nothing kept ready either
    assert fifo_plan(lab([vm("a", "dirty")], [task(1, "a")])).actions == (Revert(vm="a"),)


def test_fifo_makes_room_on_a_full_host_then_reverts():
    limits = HostLimits(max_active=1)
    assert fifo_plan(lab([vm("a", "idle"), vm("b")], [task(1, "b")], limits=limits)).actions == (
        PowerOff(vm="a", reason="sacrifice"),
    )


def test_fifo_takes_a_shared_domain_from_an_idle_owner():
    snap = lab([vm("a", "idle", domain="d"), vm("b", domain="d")], [task(1, "b")])
    assert fifo_plan(snap).actions == (Revert(vm="b", displace="a"),)


def test_policies_by_name():
    assert [get_policy(name).name for name in ("testlab", "no-prepare", "fifo")] == list(POLICIES)
    try:
        get_policy("lifo")
    except ValueError as error:
        assert str(error) == "unknown policy 'lifo' (policies: testlab, no-prepare, fifo)"
