"""The numbers of a simulation run, as the report and `--json` give them (all times in seconds).

- `jobs_done`: jobs that ended (in any final status) out of `jobs_submitted`;
- `wait_p50/p90/p99`: queue wait of each task, from when it could first run (its job arrived and
  the step it waits for completed) to its first start;
- `turnaround_p50/p90/p99`: job end minus job arrival, over the jobs that ended;
- `busy`: share of the lab's running slots (each host's `max_running`, over the makespan) used by
  running tasks;
- `revert_share`: share of the VMs' working time (reverting, settling, running) spent reverting;
- `makespan`: when the last job ended; `lower_bound` and `makespan_ratio` (see testlab.sim.bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from testlab.domain.labfile import LabDef
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.sim.bound import Bound
from testlab.sim.simulator import SimResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(result: SimResult, bound: Bound, lab: LabDef) -> dict[str, Any]:
    jobs = result.jobs
    ended = [job for job in jobs if job.ended is not None]
    turnarounds = [job.ended - job.submitted for job in ended]
    makespan = max((job.ended for job in ended), default=0.0)
    status_time = result.clock.status_time
    running = status_time[VMStatus.RUNNING]
    reverting = status_time[VMStatus.REVERTING] + status_time[VMStatus.SLEEPING]
    slots = sum(host.limits.max_running for host in lab.hosts)
    by_status: dict[str, int] = {}
    for job in ended:
        by_status[job.status] = by_status.get(job.status, 0) + 1
    templates: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(job.template for job in jobs):
        own = [job.ended - job.submitted for job in ended if job.template == name]
        templates[name] = {
            "jobs": sum(1 for job in jobs if job.template == name),
            "jobs_done": len(own),
            "turnaround_p50": percentile(own, 50),
            "turnaround_p90": percentile(own, 90),
        }
    unfinished = len(jobs) - len(ended)
    return {
        "policy": result.policy,
        "jobs_submitted": len(jobs),
        "jobs_done": len(ended),
        "jobs_unfinished": unfinished,
        "jobs_completed": by_status.get(TaskStatus.COMPLETED, 0),
        "jobs_boterror": by_status.get(TaskStatus.BOTERROR, 0),
        "wait_p50": percentile(result.waits, 50),
        "wait_p90": percentile(result.waits, 90),
        "wait_p99": percentile(result.waits, 99),
        "turnaround_p50": percentile(turnarounds, 50),
        "turnaround_p90": percentile(turnarounds, 90),
        "turnaround_p99": percentile(turnarounds, 99),
        "busy": running / (slots * makespan) if slots and makespan else 0.0,
        "revert_share": reverting / (reverting + running) if reverting + running else 0.0,
        "makespan": makespan if not unfinished else None,
        "lower_bound": bound.value,
        "makespan_ratio": makespan / bound.value if bound.value and not unfinished else None,
        "critical_path_bound": bound.critical,
        "capacity_bound": bound.capacity,
        "bottleneck": bound.bottleneck,
        "reverts": result.reverts,
        "wasted_reverts": result.wasted_reverts,
        "revert_failures": result.revert_failures,
        "vm_breaks": result.vm_breaks,
        "host_crashes": result.host_crashes,
        "requeued": result.requeued,
        "blocked": dict(sorted(result.blocked.items())),
        "templates": templates,
        "plan_calls": result.plan_calls,
        "events": result.events,
        "wall_seconds": result.wall,
    }
