"""Round after round: plan again only the part of the lab that changed since the last round.

plan() decides each host on its own, except for hosts linked by a queued pool task
(testlab/scheduler/groups.py). So the lab falls into units, a host or a group of linked hosts, and a
unit's actions and blocked reasons depend only on its own hosts, VMs and queued tasks. A unit whose
last plan gave it no action, and whose inputs are equal to that plan's, would get no action again:
its blocked reasons are carried over and it is left out of this round's plan() call. Every other
unit is planned, all of them in one call, so `plan_round` gives exactly the plan of plan() over the
whole snapshot (a property test checks it over random sequences of snapshots) at the cost of the
units that changed, plus finding what changed.

Finding what changed is itself kept cheap: the last round's sorting of VMs and queued tasks into
units is carried too (`_Layout`), and a round compares its snapshot with the last one object by
object, in passes that run in C (identity maps, not attribute lookups in Python), sorting into units
only what differs. When the lab's shape changed (VMs or hosts added, removed or moved, a pool task
queued or gone, the queue reordered) the layout is built again from scratch.

A unit that had actions is planned again even when its inputs did not change: its actions may not
have been carried out (a write that lost a race, a full disk), and then they are due again.

Inputs are compared with ==, which is cheap when the caller passes the very view objects it passed
last round for what did not change (the engine keeps them, testlab/engine/reuse.py); equal new
objects are compared field by field, which is correct, only slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress, repeat
from operator import attrgetter, is_, is_not

from testlab.scheduler.groups import host_groups
from testlab.scheduler.plan import plan
from testlab.scheduler.snapshot import HostView, Plan, Snapshot, TaskView, VMView

_VM_OF = attrgetter("vm")
_KNOWN = partial(is_not, None)
Unit = str | None  # a host, or a group named after its first host; None holds the tasks of unknown VMs


@dataclass(frozen=True, slots=True)
class _Quiet:
    """A unit whose plan had no action: the inputs it was planned on and the reasons it gave."""

    inputs: tuple
    blocked: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one snapshot falls into units. Never changed once built: a later round's layout copies
    what it changes, so a `Carried` may be passed again."""

    hosts: Mapping[str, HostView]
    vms: Mapping[str, VMView]
    vm_names: list[str]
    host_of: dict[str, str]  # VM -> its host
    host_vm_names: dict[str, list[str]]
    host_vms: dict[str, list[VMView]]
    group: dict[str, str] | None  # host -> its unit, when pools link hosts
    members: dict[str, list[str]]  # unit -> its hosts
    tasks: tuple[TaskView, ...]
    # Each task's key: numbers that grow in queue order, by the task's id (the layout keeps the tasks
    # alive, so no other object has it). Kept from round to round; a new task gets one between its
    # neighbours', so a round renumbers nothing.
    position: dict[int, float]
    keys: list[float]  # the keys of `tasks`, in order
    unit_tasks: dict[Unit, list[TaskView]]

    def unit_of_host(self, host: str) -> str:
        return host if self.group is None else self.group[host]


@dataclass(frozen=True, slots=True)
class Carried:
    """What one round leaves to the next: its units planned without action, by unit name, and how
    its snapshot fell into units."""

    quiet: Mapping[str, _Quiet] = field(default_factory=dict)
    layout: _Layout | None = None


def plan_round(snapshot: Snapshot, carried: Carried | None = None) -> tuple[Plan, Carried]:
    """This round's plan, equal to `plan(snapshot)`, and what the next round needs. Pure: give it
    the `Carried` the previous call returned (None for a first round).

    Raises SnapshotError (a ValueError) with a one-line message for a malformed snapshot."""
    previous = carried.layout if carried is not None else None
    layout = _updated(previous, snapshot) if previous is not None else None
    if layout is None:
        layout = _from_scratch(snapshot)
        if layout is None:
            return plan(snapshot), Carried()  # which raises: a VM on an unknown host
    hosts, host_vms, unit_tasks = snapshot.hosts, layout.host_vms, layout.unit_tasks

    before_quiet = carried.quiet if carried is not None else {}
    inputs: dict[str, tuple] = {}
    quiet: dict[str, _Quiet] = {}
    replan: list[str] = []
    for unit, names in layout.members.items():
        if len(names) == 1:
            key: tuple = (hosts[unit], host_vms[unit], unit_tasks[unit])
        else:
            key = (
                list(map(hosts.__getitem__, names)),
                list(chain(*map(host_vms.__getitem__, names))),
                unit_tasks[unit],
            )
        before = before_quiet.get(unit)
        if before is not None and before.inputs == key:
            quiet[unit] = before
        else:
            inputs[unit] = key
            replan.append(unit)

    if len(replan) == len(layout.members):
        decided = plan(snapshot)
    elif not replan and not unit_tasks[None]:
        decided = Plan(actions=())
    else:
        decided = plan(_part(snapshot, layout, replan))

    vms = snapshot.vms
    acting = {layout.unit_of_host(vms[action.vm].host) for action in decided.actions}
    reasons: dict[Unit, dict[str, str]] = {}
    for name, reason in decided.blocked.items():
        vm = vms.get(name)
        reasons.setdefault(None if vm is None else layout.unit_of_host(vm.host), {})[name] = reason
    for unit in replan:
        if unit not in acting:
            quiet[unit] = _Quiet(inputs[unit], reasons.get(unit, {}))
    blocked = dict(decided.blocked)
    for unit, kept in quiet.items():
        if unit not in inputs:
            blocked.update(kept.blocked)
    return Plan(actions=decided.actions, blocked=blocked), Carried(quiet, layout)


def _from_scratch(snapshot: Snapshot) -> _Layout | None:
    """The snapshot sorted into units; None if a VM is on an unknown host."""
    hosts, vms, tasks = snapshot.hosts, snapshot.vms, snapshot.tasks
    host_vms: dict[str, list[VMView]] = {name: [] for name in hosts}
    host_vm_names: dict[str, list[str]] = {name: [] for name in hosts}
    host_of: dict[str, str] = {}
    for name, vm in vms.items():
        host = vm.host
        members = host_vms.get(host)
        if members is None:
            return None
        members.append(vm)
        host_vm_names[host].append(name)
        host_of[name] = host

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
    if group is None:
        members = {name: [name] for name in hosts}
    else:
        members = {}
        for name in sorted(hosts):
            members.setdefault(group[name], []).append(name)
    unit_tasks: dict[Unit, list[TaskView]] = {None: []}
    for unit in members:
        unit_tasks[unit] = []
    for task, unit in zip(tasks, units, strict=True):
        unit_tasks[unit].append(task)
    return _Layout(
        hosts=hosts,
        vms=vms,
        vm_names=list(vms),
        host_of=host_of,
        host_vm_names=host_vm_names,
        host_vms=host_vms,
        group=group,
        members=members,
        tasks=tasks,
        position=dict(zip(map(id, tasks), range(len(tasks)), strict=True)),
        keys=list(range(len(tasks))),
        unit_tasks=unit_tasks,
    )


def _updated(last: _Layout, snapshot: Snapshot) -> _Layout | None:
    """The last layout brought up to `snapshot`, touching only what differs from the last snapshot;
    None when the lab's shape changed (then it is built from scratch)."""
    hosts, vms, tasks = snapshot.hosts, snapshot.vms, snapshot.tasks
    if hosts.keys() != last.hosts.keys() or list(vms) != last.vm_names:
        return None
    host_vms = last.host_vms
    changed_vms = list(compress(last.vm_names, map(is_not, vms.values(), last.vms.values())))
    if changed_vms:
        host_vms = dict(host_vms)
        for name in changed_vms:
            host = last.host_of[name]
            if vms[name].host != host:
                return None
            host_vms[host] = list(map(vms.__getitem__, last.host_vm_names[host]))

    unit_tasks, position, keys = last.unit_tasks, last.position, last.keys
    old = last.tasks
    if len(tasks) != len(old) or tasks != old:
        keys = list(map(position.get, map(id, tasks)))  # each task's key last round; None: a new one
        kept = list(filter(_KNOWN, keys))
        if kept != sorted(kept):
            return None  # the queue was reordered
        new_at = list(compress(range(len(tasks)), map(is_, keys, repeat(None))))
        added = list(map(tasks.__getitem__, new_at))
        removed = []
        if len(kept) < len(old):
            gone_keys = set(last.keys).difference(kept)
            removed = list(compress(old, map(gone_keys.__contains__, last.keys)))
        if any(task.vm is None for task in chain(added, removed)):
            return None  # a pool task queued or gone: the groups may change
        arrived: dict[Unit, list[TaskView]] = {}
        for task in added:
            arrived.setdefault(_unit_of_task(last, task), []).append(task)
        touched = {*arrived, *(_unit_of_task(last, task) for task in removed)}
        position = dict(position)
        for task in removed:
            del position[id(task)]
        for index in new_at:  # a key between its neighbours' (the first gets one below the rest)
            below = keys[index - 1] if index else None
            above = next(filter(_KNOWN, keys[index + 1 :]), None)
            key = (below + above) / 2 if below is not None and above is not None else None
            if key is None:
                key = below + 1 if below is not None else above - 1 if above is not None else 0
            elif not below < key < above:
                return None  # no number left between them: keys are dealt afresh
            keys[index] = key
            position[id(tasks[index])] = key
        unit_tasks = dict(unit_tasks)
        gone = set(map(id, removed))
        for unit in touched:
            mine = [task for task in unit_tasks[unit] if id(task) not in gone]
            mine += arrived.get(unit, [])
            mine.sort(key=lambda task: position[id(task)])
            unit_tasks[unit] = mine
    return _Layout(
        hosts=hosts,
        vms=vms,
        vm_names=last.vm_names,
        host_of=last.host_of,
        host_vm_names=last.host_vm_names,
        host_vms=host_vms,
        group=last.group,
        members=last.members,
        tasks=tasks,
        position=position,
        keys=keys,
        unit_tasks=unit_tasks,
    )


def _unit_of_task(layout: _Layout, task: TaskView) -> Unit:
    """A pinned task's unit: its VM's host's (None for an unknown VM)."""
    host = layout.host_of.get(task.vm)
    return None if host is None else layout.unit_of_host(host)


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


def _part(snapshot: Snapshot, layout: _Layout, replan: list[str]) -> Snapshot:
    """The snapshot of the `replan` units (and of the tasks no host holds), tasks in queue order."""
    names = [name for unit in replan for name in layout.members[unit]]
    position = layout.position
    tasks = sorted(
        chain(layout.unit_tasks[None], *map(layout.unit_tasks.__getitem__, replan)),
        key=lambda task: position[id(task)],
    )
    return Snapshot(
        now=snapshot.now,
        hosts={name: snapshot.hosts[name] for name in names},
        vms={vm.name: vm for name in names for vm in layout.host_vms[name]},
        tasks=tuple(tasks),
    )
