"""The lab as one planning round sees it: per-host counters, domain ownership and usable VMs.

Everything here is a private, mutable working copy built from the immutable snapshot, so the
planner can account for the effect of each action it decides before deciding the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testlab.domain.statuses import VMRole, VMStatus
from testlab.scheduler.snapshot import HostLimits, Snapshot, VMView


class SnapshotError(ValueError):
    """The snapshot is malformed (unknown status, role, host or stage, negative limit)."""


# Statuses whose VM can be given up to make room: it holds nothing that cannot be recreated.
LAMB_RANK = {VMStatus.DIRTY: 0, VMStatus.SLEEPING: 1, VMStatus.IDLE: 2}
ROLE_RANK = {VMRole.BASE: 0, VMRole.EXTRA: 1}
_LIMIT_NAMES = (
    "max_active",
    "max_running",
    "max_reverting",
    "max_reverts_while_running",
    "max_ready_when_idle",
)


_HOLDING = (VMStatus.REVERTING, VMStatus.SLEEPING)
_READY = (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.REVERTING)
# What one VM in each status adds to its host's counters: (active, running, reverting, ready).
_LOAD = {
    status: (
        int(status in VMStatus.ACTIVE),
        int(status == VMStatus.RUNNING),
        int(status in _HOLDING),
        int(status in _READY),
    )
    for status in VMStatus.ALL
}


@dataclass(slots=True)
class HostState:
    """Live counters of one host; `move` keeps them true as the plan changes VM statuses. Plain
    integers rather than per-status counts: the planner reads them for nearly every VM it considers."""

    name: str
    limits: HostLimits
    up: bool
    no_reverts: str | None = None
    vms: list[str] = field(default_factory=list)
    active: int = 0
    running: int = 0
    # The settle period after a revert is part of the revert: sleeping VMs still load the host.
    reverting: int = 0
    ready: int = 0  # idle, sleeping or reverting
    # May the host start one more revert now (its disk, its revert limits)? Kept with the counters:
    # the planner asks for nearly every VM it might revert, far more often than counters move.
    revert_room: bool = False
    queued: bool = False  # some usable VM of the host is needed by a queued task
    # No limit stops all work and the disk takes reverts: nothing about the host can block a task.
    open: bool = False
    tainted: bool = False  # one of its domains is held by a VM the scheduler may not act on

    def count(self, statuses: list[str]) -> None:
        """Set the counters from the statuses of the host's VMs."""
        self.running = statuses.count(VMStatus.RUNNING)
        self.reverting = statuses.count(VMStatus.REVERTING) + statuses.count(VMStatus.SLEEPING)
        self.ready = self.reverting + statuses.count(VMStatus.IDLE)
        self.active = self.ready + self.running + statuses.count(VMStatus.DIRTY)
        self._update_revert_room()

    def move(self, old: str, new: str) -> None:
        was, becomes = _LOAD[old], _LOAD[new]
        self.active += becomes[0] - was[0]
        self.running += becomes[1] - was[1]
        self.reverting += becomes[2] - was[2]
        self.ready += becomes[3] - was[3]
        self._update_revert_room()

    def _update_revert_room(self) -> None:
        reverting = self.reverting
        limits = self.limits
        self.revert_room = (
            self.no_reverts is None
            and reverting < limits.max_reverting
            and (not self.running or reverting < limits.max_reverts_while_running)
        )


DomainKey = tuple[str, str]  # (host, domain name): the same domain name on two hosts is two domains
_NO_OWNERS: list[str] = []


@dataclass(slots=True)
class Lab:
    snapshot: Snapshot
    hosts: dict[str, HostState]
    owners: dict[DomainKey, list[str]]  # the VMs holding each domain (absent: free)
    host_of: dict[str, HostState]  # VM name -> its host
    status: dict[str, str]  # current status, updated as actions are planned
    usable: set[str]  # VMs the scheduler may act on (status, role, host, maintenance request)
    busy: set[str]
    tainted: set[DomainKey]  # domains held by a VM the scheduler may not act on
    acted: set[str] = field(default_factory=set)
    touched: set[DomainKey] = field(default_factory=set)  # domains an action of this plan concerns

    def owners_of(self, key: DomainKey) -> list[str]:
        return self.owners.get(key, _NO_OWNERS)

    def contested(self, key: DomainKey) -> bool:
        """Held by several VMs: inconsistent input the planner must not build on."""
        return len(self.owners.get(key, _NO_OWNERS)) > 1


def frozen_reason(vm: VMView, host_up: bool) -> str | None:
    """Why the scheduler may never act on `vm` as things stand, or None if it may."""
    if not host_up:
        return f"host {vm.host} is down"
    if vm.status == VMStatus.MAINTENANCE:
        return f"vm {vm.name} is in maintenance"
    if vm.status == VMStatus.OFFLINE:
        return f"vm {vm.name} is offline"
    if vm.role not in VMRole.ENABLED:
        return f"vm {vm.name} is {vm.role}"
    if vm.maintenance_requested:
        return f"maintenance requested on vm {vm.name}"
    return None


def _check_limits(name: str, limits: HostLimits) -> None:
    for attr in _LIMIT_NAMES:
        value = getattr(limits, attr)
        if not isinstance(value, int) or value < 0:
            raise SnapshotError(f"host {name}: {attr} must be a non-negative integer, got {value!r}")


def classify(snapshot: Snapshot) -> Lab:
    """Validate the snapshot and build the working state in one pass over hosts and VMs."""
    hosts: dict[str, HostState] = {}
    for name, view in snapshot.hosts.items():
        _check_limits(name, view.limits)
        limits = view.limits
        hosts[name] = HostState(
            name=name,
            limits=limits,
            up=view.up,
            no_reverts=view.no_reverts,
            open=bool(
                limits.max_running and limits.max_reverting and limits.max_active and view.no_reverts is None
            ),
        )

    owners: dict[DomainKey, list[str]] = {}
    host_of: dict[str, HostState] = {}
    status: dict[str, str] = {}
    usable: set[str] = set()
    busy: set[str] = set()
    tainted: set[DomainKey] = set()
    all_statuses = VMStatus.ALL
    all_roles = VMRole.ALL
    enabled = VMRole.ENABLED
    untouchable = VMStatus.UNTOUCHABLE
    off, running = VMStatus.OFF, VMStatus.RUNNING
    for name, vm in snapshot.vms.items():
        vm_status = vm.status
        if vm_status not in all_statuses:
            raise SnapshotError(f"vm {name}: unknown status {vm_status!r}")
        role = vm.role
        if role not in all_roles:
            raise SnapshotError(f"vm {name}: unknown role {role!r}")
        host = hosts.get(vm.host)
        if host is None:
            raise SnapshotError(f"vm {name}: unknown host {vm.host!r}")
        host.vms.append(name)
        host_of[name] = host
        status[name] = vm_status
        in_flight = vm.busy
        if in_flight or vm_status == running:
            busy.add(name)
        scheduled = (
            host.up and vm_status not in untouchable and role in enabled and not vm.maintenance_requested
        )
        if scheduled:
            usable.add(name)
        # Cautious: any status but off (offline and maintenance too) may have the domain powered on.
        if vm_status != off or in_flight:
            key = (vm.host, vm.domain)
            held = owners.get(key)
            if held is None:
                owners[key] = [name]
            else:
                held.append(name)
            if not scheduled:
                tainted.add(key)
                host.tainted = True
    for host in hosts.values():
        host.count(list(map(status.__getitem__, host.vms)))
    return Lab(
        snapshot=snapshot,
        hosts=hosts,
        owners=owners,
        host_of=host_of,
        status=status,
        usable=usable,
        busy=busy,
        tainted=tainted,
    )


def blocked_reason(lab: Lab, vm_name: str) -> str | None:
    """Why the queued tasks of `vm_name` can never run as things stand; None if they only wait."""
    vm = lab.snapshot.vms.get(vm_name)
    if vm is None:
        return f"vm {vm_name} does not exist"
    host = lab.hosts[vm.host]
    reason = frozen_reason(vm, host.up)
    if reason is not None:
        return reason
    for other in sorted(lab.owners_of((vm.host, vm.domain))):
        if other != vm_name:
            other_vm = lab.snapshot.vms[other]
            why = frozen_reason(other_vm, True)
            if why is not None:
                return f"domain {vm.domain} on host {vm.host} is held by vm {other} ({why})"
    limits = host.limits
    if limits.max_running == 0:
        return f"host {vm.host} allows no running vm (max_running is 0)"
    if vm.status in (VMStatus.OFF, VMStatus.DIRTY) and limits.max_reverting == 0:
        return f"host {vm.host} allows no revert (max_reverting is 0)"
    if vm.status in (VMStatus.OFF, VMStatus.DIRTY) and host.no_reverts:
        return f"host {vm.host} takes no new revert: {host.no_reverts}"
    if vm.status == VMStatus.OFF and limits.max_active == 0:
        return f"host {vm.host} allows no active vm (max_active is 0)"
    return None
