"""The lower bound on the makespan: no policy can finish the workload earlier.

A report that says "makespan 41h" means little; "41h, 1.04 times the best possible" says the
scheduler is not the problem (the lab is). The bound is the larger of two:

- **critical path**: a job cannot end before it arrived plus the run times along its longest chain
  of dependent steps (reverts are left out: a VM may have been prepared before the job arrived);
  the latest such end over all jobs;
- **capacity**: a task pinned to its VM must be done by that VM's host and domain: one revert (plus
  the host's settle time) and the run, per task. A host cannot run more than `max_running` tasks,
  revert more than `max_reverting` VMs or keep more than `max_active` on at once, and with
  `max_reverts_while_running: 0` it never reverts while something runs. VMs of one domain take
  turns. A pool task may run on any host of its pool, so its work (its shortest run and cheapest
  revert over the pool's VMs) is spread over those hosts: each pool's hosts, and each group of hosts
  linked by pools, must do the work pinned to them plus that of the pools they hold, within their
  limits added up; and a pool's domains, taking turns, its work plus their own. The most loaded
  host, domain, or set of hosts or domains of a pool gives the bound.

Both use the work the workload really asks for (the tasks' drawn run times, without the tasks a
failed step skips) and the mean revert time of each VM, so the bound is the same for every policy.
Infrastructure faults are left out: they only make the real makespan longer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from testlab.domain.labfile import LabDef
from testlab.domain.limits import HostLimits
from testlab.domain.statuses import TaskStatus
from testlab.scheduler.groups import host_groups
from testlab.sim.jobs import SimJob, SimStep
from testlab.sim.targets import Pool
from testlab.sim.workload import Workload


@dataclass(frozen=True)
class Bound:
    value: float
    critical: float  # latest arrival + critical path over all jobs
    capacity: float  # the most loaded host or domain
    bottleneck: str  # what gives the capacity bound: "host NAME" or "domain HOST/NAME"


def _runs(step: SimStep, completes: dict[int, bool]) -> bool:
    """Does the step run at all when nothing but the tests themselves fails?"""
    after = step.after
    while after is not None:
        if not completes[after.id]:
            return False
        after = after.after
    return True


def lower_bound(jobs: list[SimJob], lab: LabDef, workload: Workload) -> Bound:
    """The larger of the critical-path and the capacity bounds of these jobs on this lab."""
    limits = {host.name: host.limits for host in lab.hosts}
    vm_host = {vm.name: vm.host for vm in lab.vms}
    vm_domain = {vm.name: (vm.host, vm.domain) for vm in lab.vms}
    revert_cost = {
        vm.name: workload.revert_for(vm.name).mean + limits[vm.host].sleep_after_revert for vm in lab.vms
    }
    run_work: dict[str, float] = defaultdict(float)
    revert_work: dict[str, float] = defaultdict(float)
    domain_work: dict[tuple[str, str], float] = defaultdict(float)
    pools: dict[int, _PoolWork] = {}
    critical = 0.0
    for job in jobs:
        completes = {
            step.id: all(t.outcome == TaskStatus.COMPLETED for t in step.tasks) for step in job.steps
        }
        chain: dict[int, float] = {}
        for step in job.steps:  # dependency order: a step's `after` comes first
            if not _runs(step, completes):
                continue
            longest = max((t.run for t in step.tasks), default=0.0)
            chain[step.id] = longest + (chain.get(step.after.id, 0.0) if step.after else 0.0)
            for task in step.tasks:
                if task.pool is not None:
                    work = pools.get(id(task.pool))
                    if work is None:
                        cheapest = min(revert_cost[vm] for vm in task.pool.vms)
                        work = pools[id(task.pool)] = _PoolWork(task.pool, cheapest)
                    work.run += task.run
                    work.revert += work.revert_cost
                    continue
                host = vm_host[task.vm]
                run_work[host] += task.run
                revert_work[host] += revert_cost[task.vm]
                domain_work[vm_domain[task.vm]] += task.run + revert_cost[task.vm]
        if chain:
            critical = max(critical, job.submitted + max(chain.values()))

    capacity, bottleneck = 0.0, ""
    for host, work in run_work.items():
        needed = _needed([limits[host]], work, revert_work[host])
        if needed > capacity:
            capacity, bottleneck = needed, f"host {host}"
    for hosts, held in _pool_host_sets(list(pools.values()), lab, vm_host):
        run = sum(run_work[h] for h in hosts) + sum(p.run for p in held)
        revert = sum(revert_work[h] for h in hosts) + sum(p.revert for p in held)
        needed = _needed([limits[h] for h in hosts], run, revert)
        if needed > capacity:
            names = ", ".join(f"[{', '.join(p.pool.labels)}]" for p in held)
            capacity = needed
            bottleneck = f"{'pool' if len(held) == 1 else 'pools'} {names} ({len(hosts)} hosts)"
    for (host, domain), work in sorted(domain_work.items()):
        if work > capacity:
            capacity, bottleneck = work, f"domain {host}/{domain}"
    for work in pools.values():  # the pool's domains take its tasks in turns, on top of their own
        domains = {vm_domain[vm] for vm in work.pool.vms}
        needed = (sum(domain_work[d] for d in domains) + work.run + work.revert) / len(domains)
        if needed > capacity:
            capacity, bottleneck = needed, f"pool [{', '.join(work.pool.labels)}] ({len(domains)} domains)"
    return Bound(max(critical, capacity), critical, capacity, bottleneck)


@dataclass(eq=False)
class _PoolWork:
    pool: Pool
    revert_cost: float  # the cheapest revert of its VMs
    run: float = 0.0
    revert: float = 0.0


def _pool_host_sets(
    pools: list[_PoolWork], lab: LabDef, vm_host: dict[str, str]
) -> list[tuple[list[str], list[_PoolWork]]]:
    """The sets of hosts whose work pools spread: each pool's hosts and each group of hosts linked by
    pools, with the pools held entirely on each set, in a stable order."""
    if not pools:
        return []
    own = {id(p): frozenset(vm_host[vm] for vm in p.pool.vms) for p in pools}
    group = host_groups((h.name for h in lab.hosts), vm_host, (p.pool.vms for p in pools))
    sets = set(own.values())
    for hosts in own.values():
        first = group[next(iter(hosts))]
        sets.add(frozenset(h for h, g in group.items() if g == first))
    return [
        (sorted(hosts), [p for p in pools if own[id(p)] <= hosts])
        for hosts in sorted(sets, key=lambda s: (len(s), sorted(s)))
    ]


def _needed(limits: list[HostLimits], run: float, revert: float) -> float:
    """How long hosts with these limits need, at least, for `run` seconds of tasks and `revert`
    seconds of reverts between them. One host: runs over its running slots, reverts over its
    reverting slots, both at once unless it never reverts while running, and both over its active
    slots. Several: the same over their slots added up; when none reverts while running, each
    host's running and reverting time add up within the makespan, so their sum over the hosts does,
    and each is at least its share of the work over the largest slots."""
    usable = [limit for limit in limits if limit.max_running and limit.max_reverting and limit.max_active]
    if not usable:
        return 0.0  # such hosts can do nothing: their jobs never end, there is no makespan to bound
    running = run / sum(limit.max_running for limit in usable)
    reverting = revert / sum(limit.max_reverting for limit in usable)
    if all(limit.max_reverts_while_running == 0 for limit in usable):
        most_running = max(limit.max_running for limit in usable)
        most_reverting = max(limit.max_reverting for limit in usable)
        both = (run / most_running + revert / most_reverting) / len(usable)
    else:
        both = max(running, reverting)
    return max(both, (run + revert) / sum(limit.max_active for limit in usable))
