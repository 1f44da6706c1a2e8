"""The lower bound on the makespan: no policy can finish the workload earlier.

A report that says "makespan 41h" means little; "41h, 1.04 times the best possible" says the
scheduler is not the problem (the lab is). The bound is the larger of two:

- **critical path**: a job cannot end before it arrived plus the run times along its longest chain
  of dependent steps (reverts are left out: a VM may have been prepared before the job arrived);
  the latest such end over all jobs;
- **capacity**: every task is pinned to its VM, so each host and each domain must do the work of
  its tasks: one revert (plus the host's settle time) and the run, per task. A host cannot run more
  than `max_running` tasks, revert more than `max_reverting` VMs or keep more than `max_active` on at
  once, and with `max_reverts_while_running: 0` it never reverts while something runs. VMs of one
  domain take turns. The most loaded host or domain gives the bound.

Both use the work the workload really asks for (the tasks' drawn run times, without the tasks a
failed step skips) and the mean revert time of each VM, so the bound is the same for every policy.
Infrastructure faults are left out: they only make the real makespan longer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from testlab.domain.labfile import LabDef
from testlab.domain.statuses import TaskStatus
from testlab.sim.jobs import SimJob, SimStep
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
    limits = {host.name: host.limits for host in lab.hosts}
    vm_host = {vm.name: vm.host for vm in lab.vms}
    vm_domain = {vm.name: (vm.host, vm.domain) for vm in lab.vms}
    revert_cost = {
        vm.name: workload.revert_for(vm.name).mean + limits[vm.host].sleep_after_revert for vm in lab.vms
    }
    run_work: dict[str, float] = defaultdict(float)
    revert_work: dict[str, float] = defaultdict(float)
    domain_work: dict[tuple[str, str], float] = defaultdict(float)
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
                host = vm_host[task.vm]
                run_work[host] += task.run
                revert_work[host] += revert_cost[task.vm]
                domain_work[vm_domain[task.vm]] += task.run + revert_cost[task.vm]
        if chain:
            critical = max(critical, job.submitted + max(chain.values()))

    capacity, bottleneck = 0.0, ""
    for host, work in run_work.items():
        limit = limits[host]
        if not (limit.max_running and limit.max_reverting and limit.max_active):
            continue  # such a host can do nothing: its jobs never end, there is no makespan to bound
        running = work / limit.max_running
        reverting = revert_work[host] / limit.max_reverting
        both = running + reverting if limit.max_reverts_while_running == 0 else max(running, reverting)
        needed = max(both, (work + revert_work[host]) / limit.max_active)
        if needed > capacity:
            capacity, bottleneck = needed, f"host {host}"
    for (host, domain), work in sorted(domain_work.items()):
        if work > capacity:
            capacity, bottleneck = work, f"domain {host}/{domain}"
    return Bound(max(critical, capacity), critical, capacity, bottleneck)
