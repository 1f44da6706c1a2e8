"""Pool targeting: a task that may run on any of several VMs ("any free VM with these labels") gets
one of them for this round, before the rest of the plan treats it like a task pinned to that VM.

Queue order decides, as everywhere: walking the queue, a pinned task claims its own VM, and a pool
task claims the best candidate no task ahead of it claimed. Best means, in order:

1. ready now: idle, usable, not busy (it can start at once);
2. being prepared: reverting or sleeping (it will be idle soon, no new revert needed);
3. revertible: off or dirty, not busy, its domain free or its own;
4. revertible by taking its shared domain over from a VM that can give it up;

and within a rank: a VM no later pinned task wants, then spread over the hosts (each host's first
candidate before any host's second, the least loaded host first). A task that waits for the next
step (stage 1) claims only VMs it would have to prepare anyway (ranks 2 to 4): it never holds an idle
VM that runnable work could use now. A candidate that is offline, in maintenance, retired, on a host
that is down or otherwise blocked is never claimed; when no candidate of a pool can ever be used,
the pool's tasks are reported blocked through their candidates' reasons.

Cost: each distinct candidate list is sorted once per round and walked with a pointer that only
moves forward, so a round costs O(queue + candidates log candidates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from testlab.domain.statuses import VMStatus
from testlab.scheduler.classify import Lab, blocked_reason
from testlab.scheduler.snapshot import TaskView

_READY, _PREPARING, _REVERTIBLE, _DISPLACING = 0, 1, 2, 3


@dataclass(slots=True)
class _Pool:
    order: list[str]  # usable candidates, best first
    position: int = 0
    later: list[str] = field(default_factory=list)  # candidates only worth it after the ready ones


def _rank(lab: Lab, name: str) -> int | None:
    status = lab.status[name]
    if name not in lab.usable:
        return None
    vm = lab.snapshot.vms[name]
    owners = lab.owners_of((vm.host, vm.domain))
    if status == VMStatus.IDLE and name not in lab.busy:
        return _READY if not owners or owners == [name] else None
    if status in (VMStatus.REVERTING, VMStatus.SLEEPING):
        return _PREPARING
    if status in (VMStatus.OFF, VMStatus.DIRTY) and name not in lab.busy:
        if not owners or owners == [name]:
            return _REVERTIBLE
        return _DISPLACING if len(owners) == 1 else None
    return None


def _order(lab: Lab, candidates: Sequence[str], wanted: set[str]) -> list[str]:
    ranked = []
    per_host: dict[str, int] = {}
    vms = lab.snapshot.vms
    for name in sorted(set(candidates)):
        vm = vms.get(name)
        if vm is None:
            continue
        rank = _rank(lab, name)
        if rank is None or blocked_reason(lab, name) is not None:
            continue
        host = lab.hosts[vm.host]
        ordinal = per_host.get(vm.host, 0)
        per_host[vm.host] = ordinal + 1
        ranked.append((rank, name in wanted, ordinal, host.running + host.reverting, vm.host, name))
    ranked.sort()
    return [entry[-1] for entry in ranked]


def assign_pools(
    lab: Lab, tasks: Sequence[TaskView], first_pool_task: int
) -> tuple[list[str | None], dict[str, str]]:
    """The VM each queued task targets this round (None: a pool task with nothing to claim), and the
    blocked reasons of the candidates of pools that no VM can serve. `first_pool_task` is the queue
    index of the first pool task: tasks before it are all pinned."""
    targets: list[str | None] = [task.vm for task in tasks]
    wanted = {task.vm for task in tasks if task.vm is not None}
    claimed: set[str] = set()
    pools: dict[int, _Pool] = {}
    blocked: dict[str, str] = {}
    claimed.update(task.vm for task in tasks[:first_pool_task])
    for index in range(first_pool_task, len(tasks)):
        task = tasks[index]
        if task.vm is not None:
            claimed.add(task.vm)
            continue
        key = id(task.candidates)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = _Pool(order=_order(lab, task.candidates, wanted))
            if not pool.order:
                blocked.update(_reasons(lab, task.candidates))
        order = pool.order
        while pool.position < len(order) and order[pool.position] in claimed:
            pool.position += 1
        position = pool.position
        if task.stage != 0:  # prepare ahead only what needs preparing: never hold an idle VM
            while position < len(order) and (
                order[position] in claimed or _rank(lab, order[position]) == _READY
            ):
                position += 1
        if position < len(order):
            targets[index] = order[position]
            claimed.add(order[position])
    return targets, blocked


def _reasons(lab: Lab, candidates: Sequence[str]) -> dict[str, str]:
    reasons = {}
    for name in candidates:
        if name in lab.snapshot.vms:
            reason = blocked_reason(lab, name)
            if reason is not None:
                reasons[name] = reason
    return reasons
