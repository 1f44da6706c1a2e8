"""Whether a plan's actions still fit their hosts as the hosts are now.

A plan is made from a snapshot a few milliseconds old. The engine records an action only if the VM it
acts on is unchanged, but a host's limits depend on all of its VMs: an administrator who ends the
maintenance of another VM of the host in between makes that VM active (its domain may be running), and
a revert planned into the last free slot would take the host past `max_active`. So when the engine
records a plan it reads the current statuses of the hosts' VMs and keeps only the actions that still
respect the hard limits (active, running, reverting, reverts while running) and leave each domain with
one user. With nothing changed the answer is the whole plan: the checks and the counting are the
plan's own (`testlab.scheduler.plan`), in the plan's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from testlab.domain.statuses import VMStatus
from testlab.scheduler.classify import HostState
from testlab.scheduler.snapshot import Action, HostLimits, PowerOff, Revert, StartTask, VMView


def still_fitting(
    actions: Iterable[Action], limits: Mapping[str, HostLimits], vms: Mapping[str, VMView]
) -> list[Action]:
    """The actions, in order, that keep their hosts within `limits` counted from `vms` (every VM of
    those hosts, as they are now) plus the actions kept before them. Power-offs always fit; an action
    on a VM or host not given is kept (the caller checks those VMs itself)."""
    statuses: dict[str, list[str]] = {}
    for vm in vms.values():
        if vm.host in limits:
            statuses.setdefault(vm.host, []).append(vm.status)
    hosts: dict[str, HostState] = {}
    for name, host_statuses in statuses.items():
        host = hosts[name] = HostState(name=name, limits=limits[name], up=True)
        host.count(host_statuses)
    status = {name: vm.status for name, vm in vms.items()}
    kept: list[Action] = []
    for action in actions:
        vm = vms.get(action.vm)
        host = hosts.get(vm.host) if vm is not None else None
        if isinstance(action, PowerOff) or vm is None or host is None:
            kept.append(action)
            continue
        if isinstance(action, StartTask):
            if not _room_to_start(host):
                continue
            host.move(status[vm.name], VMStatus.RUNNING)
            status[vm.name] = VMStatus.RUNNING
        elif isinstance(action, Revert):
            if not _room_to_revert(host, status[vm.name], action.displace) or _domain_taken(
                vms, status, vm, action.displace
            ):
                continue
            if action.displace is not None and action.displace in status:
                host.move(status[action.displace], VMStatus.OFF)
                status[action.displace] = VMStatus.OFF
            host.move(status[vm.name], VMStatus.REVERTING)
            status[vm.name] = VMStatus.REVERTING
        kept.append(action)
    return kept


def _room_to_start(host: HostState) -> bool:
    limits = host.limits
    if host.running + 1 > limits.max_running:
        return False
    return not (host.reverting and host.reverting > limits.max_reverts_while_running)


def _room_to_revert(host: HostState, status: str, displace: str | None) -> bool:
    if not host.revert_room:
        return False
    return not (status == VMStatus.OFF and displace is None and host.active + 1 > host.limits.max_active)


def _domain_taken(
    vms: Mapping[str, VMView], status: Mapping[str, str], vm: VMView, displace: str | None
) -> bool:
    """Another VM than the one given up holds the domain (is not off, or has an operation)."""
    return any(
        other.host == vm.host
        and other.domain == vm.domain
        and other.name not in (vm.name, displace)
        and (status[other.name] != VMStatus.OFF or other.busy)
        for other in vms.values()
    )
