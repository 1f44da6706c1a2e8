"""plan(snapshot) -> Plan: one greedy, pure scheduling round.

The engine re-plans after every change it observes, so a round only has to be right for this
moment: start what can start, prepare the VMs the queue needs next (most urgent first, within
the host limits, making room by sacrifice or domain displacement where allowed), keep a few VMs
ready on hosts with nothing queued, and power off dirty VMs nothing needs. Every decision updates
the working counters at once, so later decisions see the effect of earlier ones.
"""

from __future__ import annotations

from itertools import chain

from testlab.domain.statuses import VMStatus
from testlab.scheduler.classify import Lab, blocked_reason, classify
from testlab.scheduler.needs import (
    NEXT,
    RUNNABLE,
    Needs,
    Niceness,
    future_niceness,
    scan_pinned,
    scan_tasks,
)
from testlab.scheduler.pools import assign_pools
from testlab.scheduler.sacrifice import can_displace, pick_lamb
from testlab.scheduler.snapshot import Action, Plan, PowerOff, Revert, Snapshot, StartTask

_REVERTIBLE = (VMStatus.OFF, VMStatus.DIRTY)


def plan(snapshot: Snapshot, *, prepare_ahead: bool = True) -> Plan:
    """Decide this round's actions. Pure and deterministic: the snapshot carries all it needs.

    `prepare_ahead=False` reverts only the VMs that runnable tasks need now: no VM is prepared for
    a step that still waits for an earlier one, and none is kept ready on an idle host. The engine
    never turns it off; it exists so the simulator can measure what preparing ahead is worth.

    Raises SnapshotError (a ValueError) with a one-line message for a malformed snapshot.
    """
    lab = classify(snapshot)
    needs = scan_pinned(snapshot.tasks)
    pool_blocked: dict[str, str] = {}
    if not isinstance(needs, Needs):
        targets, pool_blocked = assign_pools(lab, snapshot.tasks, first_pool_task=needs)
        needs = scan_tasks(snapshot.tasks, targets)
    blocked = _block(lab, needs)
    for name, reason in pool_blocked.items():
        blocked.setdefault(name, reason)
    planner = _Planner(lab, needs, blocked)
    planner.start_tasks()
    planner.prepare(ahead=prepare_ahead)
    planner.power_off_unneeded()
    return Plan(actions=tuple(planner.actions), blocked=blocked)


def _block(lab: Lab, needs: Needs) -> dict[str, str]:
    """Record the VMs whose tasks can never run as things stand, and forget their needs."""
    blocked: dict[str, str] = {}
    vms = lab.snapshot.vms
    usable = lab.usable
    host_of = lab.host_of
    tainted = lab.tainted
    for name in chain(needs.runnable, needs.next):
        if name in usable:  # fast path for the common case: nothing in the way at all
            host = host_of[name]
            if host.open and (not host.tainted or (host.name, vms[name].domain) not in tainted):
                host.queued = True
                continue
        reason = blocked_reason(lab, name)
        if reason is None:
            lab.hosts[vms[name].host].queued = True
        else:
            blocked[name] = reason
    for name in blocked:
        needs.drop(name)
    return blocked


class _Planner:
    def __init__(self, lab: Lab, needs: Needs, blocked: dict[str, str]) -> None:
        self.lab = lab
        self.needs = needs
        self.blocked = blocked
        self.actions: list[Action] = []

    def _mark(self, name: str, new_status: str) -> None:
        lab = self.lab
        lab.host_of[name].move(lab.status[name], new_status)
        lab.status[name] = new_status
        lab.acted.add(name)

    def start_tasks(self) -> None:
        """Runnable tasks whose VM is idle start now, in queue order, within the running limits."""
        lab = self.lab
        vms = lab.snapshot.vms
        tasks = lab.snapshot.tasks
        status, busy, usable = lab.status, lab.busy, lab.usable
        idle = VMStatus.IDLE
        for name, index in self.needs.runnable.items():
            if status[name] != idle or name in busy or name not in usable:
                continue
            vm = vms[name]
            if vm.used and tasks[index].clean:
                # Used since its last wipe: to this task the VM is dirty, and prepare() reverts it.
                lab.host_of[name].move(idle, VMStatus.DIRTY)
                status[name] = VMStatus.DIRTY
                continue
            key = (vm.host, vm.domain)
            if key in lab.touched or lab.contested(key):
                continue
            host = lab.host_of[name]
            limits = host.limits
            if host.running + 1 > limits.max_running:
                continue
            if host.reverting and host.reverting > limits.max_reverts_while_running:
                continue
            self._mark(name, VMStatus.RUNNING)
            lab.touched.add(key)
            self.actions.append(StartTask(task_id=tasks[index].id, vm=name))

    def prepare(self, ahead: bool = True) -> None:
        """Revert needed VMs, most urgent first: runnable, then (when `ahead`) next steps, then
        keep-ready."""
        lab = self.lab
        vms = lab.snapshot.vms
        status = lab.status
        host_of = lab.host_of
        # Two of _try_revert's tests are repeated here only to spare a call for the many VMs already
        # up or on a host that has all the reverts it may run.
        for name, index in self.needs.runnable.items():
            if status[name] in _REVERTIBLE and host_of[name].revert_room:
                self._try_revert(name, (RUNNABLE, index, 0, name), "needed")
        if not ahead:
            return
        for name, index in self.needs.next.items():
            if status[name] in _REVERTIBLE and host_of[name].revert_room:
                self._try_revert(name, (NEXT, index, 0, name), "next")
        for _, host in sorted(lab.hosts.items()):
            if host.queued or not host.up:
                continue
            spare = [vms[n] for n in host.vms if status[n] in _REVERTIBLE and n in lab.usable]
            for niceness in sorted(future_niceness(vm) for vm in spare):
                self._try_revert(niceness[3], niceness, "ready")

    def _try_revert(self, name: str, need: Niceness, reason: str) -> None:
        lab = self.lab
        status = lab.status[name]
        if status not in _REVERTIBLE or name in lab.busy or name in lab.acted or name not in lab.usable:
            return
        # Every test up to the sacrifice only decides whether to go on; the host's, cheapest and most
        # often failing once the plan has filled the hosts, comes first.
        host = lab.host_of[name]
        if not host.revert_room:
            return
        limits = host.limits
        future = reason == "ready"
        if future and host.ready + 1 > limits.max_ready_when_idle:
            return
        if name in self.blocked:
            return  # keeping ready a VM whose tasks cannot run would only waste a slot
        vm = lab.snapshot.vms[name]
        key = (vm.host, vm.domain)
        if key in lab.touched:
            return
        owners = lab.owners_of(key)
        if len(owners) > 1:
            return
        displace = None
        if owners and owners[0] != name:
            owner = owners[0]
            # Taking a domain away is only worth it for work that can start as soon as it is ready.
            if need[0] != RUNNABLE or not can_displace(lab, self.needs, owner, need):
                return
            displace = owner
        if status == VMStatus.OFF and displace is None and host.active + 1 > limits.max_active:
            self._sacrifice_for(name, host, need, future)
            return

        if displace is not None:
            self._mark(displace, VMStatus.OFF)
        self._mark(name, VMStatus.REVERTING)
        lab.owners[key] = [name]
        lab.touched.add(key)
        self.actions.append(Revert(vm=name, displace=displace, reason=reason))

    def _sacrifice_for(self, name: str, host, need: Niceness, future: bool) -> None:
        """Make room on a full host: power a lamb off now; `name` is reverted in a later round, once
        the lamb is really off, so the host never has more active VMs than its limit, not even while
        the power-off runs. While an earlier power-off is still making room, nothing more is given up."""
        lab = self.lab
        limits = host.limits
        if host.active > limits.max_active:
            return  # over a lowered limit: one sacrifice would not make room
        if any(lab.status[other] == VMStatus.DIRTY and other in lab.busy for other in host.vms):
            return  # a power-off in flight is already making room
        lamb = pick_lamb(lab, self.needs, host, need, dirty_only=future)
        if lamb is None:
            return
        lamb_vm = lab.snapshot.vms[lamb]
        lab.acted.add(lamb)
        lab.touched.add((lamb_vm.host, lamb_vm.domain))
        lab.acted.add(name)
        self.actions.append(PowerOff(vm=lamb, reason="sacrifice"))

    def power_off_unneeded(self) -> None:
        """Dirty VMs nothing queued needs go off; so do dirty holders of a contested domain."""
        lab = self.lab
        vms = lab.snapshot.vms
        victims = []
        for name, status in lab.status.items():
            if status != VMStatus.DIRTY or name in lab.busy or name in lab.acted or name not in lab.usable:
                continue
            vm = vms[name]
            if self.needs.needed(name) and not lab.contested((vm.host, vm.domain)):
                continue
            victims.append(name)
        for name in sorted(victims):
            self._mark(name, VMStatus.OFF)
            self.actions.append(PowerOff(vm=name, reason="unneeded"))
