"""Who may be given up for a more urgent VM: sacrificed lambs and displaced domain owners.

A lamb is a powered-on VM holding nothing that cannot be recreated by a revert: dirty, sleeping
or idle, with no engine operation in flight. Giving one up only makes sense for a VM needed more
urgently than anything the lamb is needed for, otherwise the next round would undo it.
"""

from __future__ import annotations

from testlab.domain.statuses import VMStatus
from testlab.scheduler.classify import LAMB_RANK, HostState, Lab
from testlab.scheduler.needs import Needs, Niceness


def _may_give_up(lab: Lab, name: str) -> bool:
    return name in lab.usable and name not in lab.busy and name not in lab.acted


def can_displace(lab: Lab, needs: Needs, owner: str, need: Niceness) -> bool:
    """May `owner` lose its shared domain to a VM with niceness `need`?"""
    if not _may_give_up(lab, owner) or lab.status[owner] not in LAMB_RANK:
        return False
    vm = lab.snapshot.vms[owner]
    return needs.niceness(vm, lab.hosts[vm.host].queued) > need


def pick_lamb(lab: Lab, needs: Needs, host: HostState, need: Niceness, dirty_only: bool) -> str | None:
    """The lamb of `host` to power off for a VM with niceness `need`, or None.

    Dirty before sleeping before idle (cheapest to lose first), then the least useful; idle and
    sleeping lambs are spared when the need is only speculative (`dirty_only`).
    """
    best: str | None = None
    best_key: tuple[int, Niceness] | None = None
    vms = lab.snapshot.vms
    for name in host.vms:
        status = lab.status[name]
        rank = LAMB_RANK.get(status)
        if rank is None or (dirty_only and status != VMStatus.DIRTY) or not _may_give_up(lab, name):
            continue
        vm = vms[name]
        # In a domain held by several VMs only powering off dirty ones is allowed.
        if status != VMStatus.DIRTY and lab.contested((vm.host, vm.domain)):
            continue
        niceness = needs.niceness(vm, host.queued)
        if niceness <= need:
            continue
        if best_key is None or rank < best_key[0] or (rank == best_key[0] and niceness > best_key[1]):
            best, best_key = name, (rank, niceness)
    return best
