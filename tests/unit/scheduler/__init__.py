"""Builders for hand-made labs and the invariants every plan must satisfy.

The invariant checker is independent of the scheduler's own bookkeeping: it recomputes the lab
state after applying the plan from the snapshot and the actions alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from testlab.domain.statuses import VMRole, VMStatus
from testlab.scheduler import (
    HostLimits,
    HostView,
    Plan,
    PowerOff,
    Revert,
    Snapshot,
    StartTask,
    TaskView,
    VMView,
)

ACTIVE = VMStatus.ACTIVE


def vm(name: str, status: str = "off", host: str = "h1", domain: str | None = None, **kw) -> VMView:
    return VMView(name=name, host=host, domain=domain or name, status=status, **kw)


def task(task_id: int, vm_name: str, stage: int = 0, priority: int = 5, job: int | None = None) -> TaskView:
    return TaskView(
        id=task_id,
        vm=vm_name,
        job_id=job if job is not None else task_id,
        priority=priority,
        step_id=1,
        stage=stage,
    )


def pool_task(
    task_id: int, candidates: tuple[str, ...], stage: int = 0, priority: int = 5, job: int | None = None
) -> TaskView:
    """A task of a pool step: any of `candidates` will do (pass the same tuple for one pool)."""
    return TaskView(
        id=task_id,
        vm=None,
        job_id=job if job is not None else task_id,
        priority=priority,
        step_id=1,
        stage=stage,
        candidates=candidates,
    )


def lab(
    vms: list[VMView],
    tasks: list[TaskView] = (),
    limits: HostLimits | None = None,
    hosts: list[HostView] | None = None,
) -> Snapshot:
    if hosts is None:
        names = sorted({v.host for v in vms} or {"h1"})
        hosts = [HostView(name=n, limits=limits or HostLimits()) for n in names]
    return Snapshot.build(now=1000.0, hosts=hosts, vms=vms, tasks=list(tasks))


def apply(snapshot: Snapshot, plan: Plan) -> dict[str, str]:
    """VM statuses once the engine has started every action of the plan."""
    status = {name: v.status for name, v in snapshot.vms.items()}
    for action in plan.actions:
        if isinstance(action, StartTask):
            status[action.vm] = VMStatus.RUNNING
        elif isinstance(action, Revert):
            if action.displace is not None:
                status[action.displace] = VMStatus.OFF
            status[action.vm] = VMStatus.REVERTING
        else:
            status[action.vm] = VMStatus.OFF
    return status


def _host_numbers(snapshot: Snapshot, status: dict[str, str]) -> dict[str, dict[str, int]]:
    numbers: dict[str, Counter] = {h: Counter() for h in snapshot.hosts}
    for name, v in snapshot.vms.items():
        s = status[name]
        c = numbers[v.host]
        c["active"] += s in ACTIVE
        c["running"] += s == VMStatus.RUNNING
        c["reverting"] += s in (VMStatus.REVERTING, VMStatus.SLEEPING)
        c["ready"] += s in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.REVERTING)
    return numbers


def _frozen(snapshot: Snapshot, v: VMView) -> bool:
    return (
        v.status in (VMStatus.MAINTENANCE, VMStatus.OFFLINE)
        or v.role not in VMRole.ENABLED
        or not snapshot.hosts[v.host].up
        or v.maintenance_requested
    )


def check_plan(snapshot: Snapshot, plan: Plan) -> None:
    """Assert every guarantee of a single plan (see docs/scheduler.md)."""
    vms = snapshot.vms
    tasks = {t.id: t for t in snapshot.tasks}
    touched: list[str] = []
    per_domain: dict[tuple[str, str], list[str]] = defaultdict(list)
    for action in plan.actions:
        touched.append(action.vm)
        v = vms[action.vm]
        assert not v.busy and v.status != VMStatus.RUNNING, f"acted on busy {action}"
        assert not _frozen(snapshot, v), f"acted on untouchable {action}"
        key = (v.host, v.domain)
        if isinstance(action, StartTask):
            assert v.status == VMStatus.IDLE, action
            t = tasks[action.task_id]
            assert t.vm == action.vm if t.vm is not None else action.vm in t.candidates, action
            assert t.stage == 0, action
            assert not (t.clean and v.used), f"a clean task on a used VM: {action}"
            assert action.vm not in plan.blocked
            per_domain[key].append(action.vm)
        elif isinstance(action, Revert):
            # An idle VM is reverted only for a clean task, when it was used since its last wipe.
            wants_clean = any(t.clean and t.stage == 0 and t.vm == action.vm for t in snapshot.tasks)
            assert v.status in (VMStatus.OFF, VMStatus.DIRTY) or (
                v.status == VMStatus.IDLE and v.used and wants_clean
            ), action
            assert action.reason in ("needed", "next", "ready")
            assert action.vm not in plan.blocked
            per_domain[key].append(action.vm)
            if action.displace is not None:
                assert action.reason == "needed", action
                owner = vms[action.displace]
                assert (owner.host, owner.domain) == key and owner.name != v.name
                assert owner.status in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.DIRTY), action
                assert not owner.busy and not _frozen(snapshot, owner), action
                touched.append(owner.name)
        else:
            assert isinstance(action, PowerOff)
            assert action.reason in ("sacrifice", "unneeded")
            assert v.status in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.DIRTY), action
            per_domain[key].append(action.vm)
    assert len(touched) == len(set(touched)), f"a VM acted on twice: {plan.actions}"
    task_ids = [a.task_id for a in plan.actions if isinstance(a, StartTask)]
    assert len(task_ids) == len(set(task_ids))

    # Never two VMs of one domain reverted or started in one plan, nor mixed with a power off.
    for key, names in per_domain.items():
        starters = [
            a
            for a in plan.actions
            if isinstance(a, StartTask | Revert) and (vms[a.vm].host, vms[a.vm].domain) == key
        ]
        if starters:
            assert len(names) == 1, f"domain {key} acted on by {names}"

    after = apply(snapshot, plan)
    # A domain never held by two VMs, unless it already was (then never worse).
    holders_before: Counter = Counter()
    holders_after: Counter = Counter()
    for name, v in vms.items():
        holders_before[(v.host, v.domain)] += v.status != VMStatus.OFF or v.busy
        holders_after[(v.host, v.domain)] += after[name] != VMStatus.OFF or v.busy
    for key, count in holders_after.items():
        assert count <= max(1, holders_before[key]), f"domain {key} held by {count} VMs"

    before_n = _host_numbers(snapshot, {n: v.status for n, v in vms.items()})
    after_n = _host_numbers(snapshot, after)
    queued_hosts = {vms[t.vm].host for t in snapshot.tasks if t.vm in vms}
    queued_hosts |= {vms[c].host for t in snapshot.tasks if t.vm is None for c in t.candidates if c in vms}
    for host, view in snapshot.hosts.items():
        lim = view.limits
        b, a = before_n[host], after_n[host]
        for what, limit in (
            ("active", lim.max_active),
            ("running", lim.max_running),
            ("reverting", lim.max_reverting),
        ):
            assert a[what] <= max(limit, b[what]), f"{host}: {what} {b[what]} -> {a[what]} > {limit}"
        if a["running"] and a["reverting"] > lim.max_reverts_while_running:
            assert b["running"] and a["reverting"] <= b["reverting"] and a["running"] <= b["running"], (
                f"{host}: reverting {a['reverting']} while running {a['running']}"
            )
        if host not in queued_hosts:
            assert a["ready"] <= max(lim.max_ready_when_idle, b["ready"]), f"{host}: too many kept ready"
