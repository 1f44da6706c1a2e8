"""Property tests over random labs and queues: the guarantees hold for every snapshot."""

from __future__ import annotations

import copy
import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testlab.domain.statuses import VMStatus
from testlab.scheduler import HostLimits, HostView, Snapshot, StartTask, TaskView, VMView, plan
from testlab.scheduler.room import still_fitting
from tests.unit.scheduler import apply, check_plan

STATUSES = sorted(VMStatus.ALL)
ROLES = ["base", "base", "extra", "extra", "retired", "deleted"]
PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

limit = st.integers(min_value=0, max_value=4)
limits = st.builds(
    HostLimits,
    max_active=limit,
    max_running=limit,
    max_reverting=limit,
    max_reverts_while_running=limit,
    max_ready_when_idle=limit,
)


@st.composite
def labs(draw: st.DrawFn, max_tasks: int = 15) -> Snapshot:
    n_hosts = draw(st.integers(1, 4))
    hosts = [
        HostView(name=f"h{i}", limits=draw(limits), up=draw(st.booleans() | st.just(True)))
        for i in range(n_hosts)
    ]
    vms = []
    for i in range(draw(st.integers(1, 12))):
        status = draw(st.sampled_from(STATUSES))
        vms.append(
            VMView(
                name=f"vm{i}",
                host=f"h{draw(st.integers(0, n_hosts - 1))}",
                domain=f"d{draw(st.integers(0, 5))}",  # few names: domains are often shared
                status=status,
                role=draw(st.sampled_from(ROLES)),
                busy=status == VMStatus.RUNNING or draw(st.booleans()),
                maintenance_requested=draw(st.integers(0, 7)) == 0,
                recent_demand=draw(st.integers(0, 3)),
            )
        )
    names = [v.name for v in vms] + ["ghost"]
    # A few pools (any of these VMs), each one shared tuple, as the engine builds them.
    pools = [tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=5))) for _ in range(2)]
    tasks = [
        TaskView(
            id=i,
            vm=None if pooled else draw(st.sampled_from(names)),
            job_id=draw(st.integers(1, 6)),
            priority=draw(st.integers(0, 3)),
            step_id=draw(st.integers(1, 3)),
            stage=draw(st.integers(0, 1)),
            candidates=draw(st.sampled_from(pools)) if pooled else (),
        )
        for i, pooled in enumerate(draw(st.lists(st.booleans(), max_size=max_tasks)))
    ]
    return Snapshot.build(now=0.0, hosts=hosts, vms=vms, tasks=tasks)


@PROPERTY_SETTINGS
@given(labs())
def test_every_plan_keeps_every_guarantee(snapshot: Snapshot) -> None:
    check_plan(snapshot, plan(snapshot))


@PROPERTY_SETTINGS
@given(labs())
def test_plan_is_deterministic_pure_and_order_independent(snapshot: Snapshot) -> None:
    before = copy.deepcopy(snapshot)
    first = plan(snapshot)
    assert snapshot == before
    assert plan(snapshot) == first
    shuffled = Snapshot(
        now=snapshot.now,
        hosts=dict(reversed(snapshot.hosts.items())),
        vms=dict(reversed(snapshot.vms.items())),
        tasks=snapshot.tasks,
    )
    assert plan(shuffled) == first


@PROPERTY_SETTINGS
@given(labs())
def test_replanning_after_applying_is_still_safe(snapshot: Snapshot) -> None:
    """The next round sees the in-flight operations as busy and must keep every guarantee too."""
    result = plan(snapshot)
    after = apply(snapshot, result)
    acted = {a.vm for a in result.actions} | {getattr(a, "displace", None) for a in result.actions}
    started = {a.task_id for a in result.actions if isinstance(a, StartTask)}
    # Every VM acted on has an operation in flight (a power off too: its domain is not free yet).
    vms = {
        name: dataclasses.replace(v, status=after[name], busy=v.busy or name in acted)
        for name, v in snapshot.vms.items()
    }
    nxt = Snapshot(
        snapshot.now + 1, snapshot.hosts, vms, tuple(t for t in snapshot.tasks if t.id not in started)
    )
    check_plan(nxt, plan(nxt))


@st.composite
def free_labs(draw: st.DrawFn) -> Snapshot:
    """One free host, every VM off, limits that allow work at all, a queue of runnable tasks."""
    one_up = st.integers(1, 4)
    host = HostView(
        name="h0",
        limits=HostLimits(
            max_active=draw(one_up),
            max_running=draw(one_up),
            max_reverting=draw(one_up),
            max_reverts_while_running=draw(limit),
            max_ready_when_idle=draw(limit),
        ),
    )
    vms = [
        VMView(
            name=f"vm{i}",
            host="h0",
            domain=f"d{draw(st.integers(0, 3))}",
            status="off",
            role=draw(st.sampled_from(["base", "extra"])),
        )
        for i in range(draw(st.integers(1, 8)))
    ]
    tasks = [
        TaskView(
            id=i,
            vm=draw(st.sampled_from([v.name for v in vms])),
            job_id=draw(st.integers(1, 4)),
            priority=draw(st.integers(0, 2)),
            step_id=1,
        )
        for i in range(draw(st.integers(1, 10)))
    ]
    return Snapshot.build(now=0.0, hosts=[host], vms=vms, tasks=tasks)


@settings(max_examples=200, deadline=None)
@given(free_labs())
def test_every_runnable_task_eventually_starts(snapshot: Snapshot) -> None:
    """Apply plans repeatedly; in-flight work completes between rounds (revert -> idle, task -> dirty)."""
    vms = dict(snapshot.vms)
    queue = list(snapshot.tasks)
    for _round in range(4 * len(queue) + 10):
        if not queue:
            return
        current = Snapshot(snapshot.now + _round, snapshot.hosts, vms, tuple(queue))
        result = plan(current)
        check_plan(current, result)
        assert result.blocked == {}
        after = apply(current, result)
        started = {a.task_id for a in result.actions if isinstance(a, StartTask)}
        queue = [t for t in queue if t.id not in started]
        finished = {"reverting": "idle", "running": "dirty"}
        vms = {
            name: dataclasses.replace(v, status=finished.get(after[name], after[name]))
            for name, v in vms.items()
        }
    raise AssertionError(f"tasks never started: {queue}")


@PROPERTY_SETTINGS
@given(labs())
def test_no_startable_task_is_left_waiting(snapshot: Snapshot) -> None:
    """Greedy: an idle, free-to-use VM with a runnable task starts unless its host is saturated."""
    result = plan(snapshot)
    acted = {a.vm for a in result.actions} | {getattr(a, "displace", None) for a in result.actions}
    after = apply(snapshot, result)
    holders: dict[tuple[str, str], list[str]] = {}
    for v in snapshot.vms.values():
        if v.status != "off" or v.busy:
            holders.setdefault((v.host, v.domain), []).append(v.name)
    runnable = {t.vm for t in snapshot.tasks if t.stage == 0}
    for v in snapshot.vms.values():
        host = snapshot.hosts[v.host]
        if (
            v.name not in runnable
            or v.name in acted
            or v.status != "idle"
            or v.busy
            or v.maintenance_requested
            or v.role not in ("base", "extra")
            or not host.up
            or holders[(v.host, v.domain)] != [v.name]
        ):
            continue
        same_host = [n for n, w in snapshot.vms.items() if w.host == v.host]
        running = sum(after[n] == "running" for n in same_host)
        reverting = sum(
            w.status in ("reverting", "sleeping") for w in snapshot.vms.values() if w.host == v.host
        )
        limits = host.limits
        assert running >= limits.max_running or reverting > limits.max_reverts_while_running, (
            f"{v.name} could have started"
        )


@PROPERTY_SETTINGS
@given(labs())
def test_a_plan_still_fits_the_lab_it_was_made_for(snapshot: Snapshot) -> None:
    """The engine re-checks a plan against the hosts' current rows when it records it; with nothing
    changed, every action must pass, or the same plan would be dropped round after round."""
    decided = plan(snapshot)
    limits = {name: host.limits for name, host in snapshot.hosts.items()}
    assert still_fitting(decided.actions, limits, snapshot.vms) == list(decided.actions)
