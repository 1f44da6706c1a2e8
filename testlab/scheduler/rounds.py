"""Round after round: plan again only the part of the lab that changed since the last round.

plan() decides each host on its own, except for hosts linked by a queued pool task
(testlab/scheduler/groups.py). So the lab falls into units, a host or a group of linked hosts, and a
unit's actions and blocked reasons depend only on its own hosts, VMs and queued tasks. A unit whose
last plan gave it no action, and whose inputs are equal to that plan's, would get no action again:
its blocked reasons are carried over and it is left out of this round's plan() call. Every other
unit is planned, all of them in one call, so `plan_round` gives exactly the plan of plan() over the
whole snapshot (a property test checks it over random sequences of snapshots) at the cost of the
units that changed, plus one pass sorting the snapshot into units.

A unit that had actions is planned again even when its inputs did not change: its actions may not
have been carried out (a write that lost a race, a full disk), and then they are due again.

Inputs are compared with ==, which is cheap when the caller passes the very view objects it passed
last round for what did not change (the engine keeps them, testlab/engine/reuse.py); equal new
objects are compared field by field, which is correct, only slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import attrgetter

from testlab.scheduler.groups import host_groups
from testlab.scheduler.plan import plan
from testlab.scheduler.snapshot import Plan, Snapshot, TaskView, VMView

_VM_OF = attrgetter("vm")


@dataclass(frozen=True, slots=True)
class _Quiet:
    """A unit whose plan had no action: the inputs it was planned on and the reasons it gave."""

    inputs: tuple
    blocked: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Carried:
    """What one round leaves to the next: its units planned without action, by unit name."""

    quiet: Mapping[str, _Quiet] = field(default_factory=dict)


def plan_round(snapshot: Snapshot, carried: Carried | None = None) -> tuple[Plan, Carried]:
    """This round's plan, equal to `plan(snapshot)`, and what the next round needs. Pure: give it
    the `Carried` the previous call returned (None for a first round).

    Raises SnapshotError (a ValueError) with a one-line message for a malformed snapshot."""
    hosts = snapshot.hosts
    vms = snapshot.vms
    tasks = snapshot.tasks
    host_vms: dict[str, list[VMView]] = {name: [] for name in hosts}
    host_of: dict[str, str] = {}
    for name, vm in vms.items():
        host = vm.host
        members = host_vms.get(host)
        if members is None:
            return plan(snapshot), Carried()  # which raises: a VM on an unknown host
        members.append(vm)
        host_of[name] = host

    # Each task's unit: its VM's host (or its host's group); None for the tasks no host holds (of
    # unknown VMs), which are planned every round (plan() only reports them blocked).
    units = list(map(host_of.get, map(_VM_OF, tasks)))
    group = None
    if None in units:  # pool tasks, or tasks of unknown VMs
        pools = {id(task.candidates): task.candidates for task in tasks if task.vm is None}
        if pools:
            group = _groups(snapshot, pools)
            for index, task in enumerate(tasks):
                if task.vm is None:
                    vm = _first_known(vms, task.candidates)
                    units[index] = None if vm is None else vm.host
            units = [None if host is None else group[host] for host in units]
    unit_tasks: dict[str | None, list[TaskView]] = {None: []}
    if group is None:
        members = {name: [name] for name in hosts}
    else:
        members = {}
        for name in sorted(hosts):
            members.setdefault(group[name], []).append(name)
    for unit in members:
        unit_tasks[unit] = []
    for task, unit in zip(tasks, units, strict=True):
        unit_tasks[unit].append(task)

    previous = carried.quiet if carried is not None else {}
    inputs: dict[str, tuple] = {}
    quiet: dict[str, _Quiet] = {}
    replan: list[str] = []
    for unit, names in members.items():
        if len(names) == 1:
            key: tuple = (hosts[unit], host_vms[unit], unit_tasks[unit])
        else:
            key = (
                list(map(hosts.__getitem__, names)),
                list(chain(*map(host_vms.__getitem__, names))),
                unit_tasks[unit],
            )
        before = previous.get(unit)
        if before is not None and before.inputs == key:
            quiet[unit] = before
        else:
            inputs[unit] = key
            replan.append(unit)

    if len(replan) == len(members):
        decided = plan(snapshot)
    elif not replan and not unit_tasks[None]:
        decided = Plan(actions=())
    else:
        decided = plan(_part(snapshot, replan, members, host_vms, units))

    acting = {_unit_of(vms, group, action.vm) for action in decided.actions}
    reasons: dict[str | None, dict[str, str]] = {}
    for name, reason in decided.blocked.items():
        reasons.setdefault(_unit_of(vms, group, name), {})[name] = reason
    for unit in replan:
        if unit not in acting:
            quiet[unit] = _Quiet(inputs[unit], reasons.get(unit, {}))
    blocked = dict(decided.blocked)
    for unit, kept in quiet.items():
        if unit not in inputs:
            blocked.update(kept.blocked)
    return Plan(actions=decided.actions, blocked=blocked), Carried(quiet)


def _groups(snapshot: Snapshot, pools: dict[int, tuple[str, ...]]) -> dict[str, str]:
    vms = snapshot.vms
    vm_hosts = {name: vms[name].host for candidates in pools.values() for name in candidates if name in vms}
    return host_groups(snapshot.hosts, vm_hosts, pools.values())


def _first_known(vms: Mapping[str, VMView], candidates: tuple[str, ...]) -> VMView | None:
    for name in candidates:
        vm = vms.get(name)
        if vm is not None:
            return vm
    return None


def _unit_of(vms: Mapping[str, VMView], group: dict[str, str] | None, name: str) -> str | None:
    vm = vms.get(name)
    if vm is None:
        return None
    return vm.host if group is None else group[vm.host]


def _part(
    snapshot: Snapshot,
    replan: list[str],
    members: dict[str, list[str]],
    host_vms: dict[str, list[VMView]],
    units: list[str | None],
) -> Snapshot:
    """The snapshot of the `replan` units (and of the tasks no host holds), tasks in queue order."""
    names = [name for unit in replan for name in members[unit]]
    wanted = set(replan)
    wanted.add(None)
    return Snapshot(
        now=snapshot.now,
        hosts={name: snapshot.hosts[name] for name in names},
        vms={vm.name: vm for name in names for vm in host_vms[name]},
        tasks=tuple(compress(snapshot.tasks, map(wanted.__contains__, units))),
    )
