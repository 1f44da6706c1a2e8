"""The simulated jobs: every arrival of every template, its steps and tasks, and their run times.

All of it is drawn before the simulation starts, from random streams that depend only on the seed
and on the job's place in the workload (template, arrival number), never on what the scheduler
does. Every policy compared on a workload therefore gets the very same jobs, arriving at the same
times, whose tasks run for the same times and fail the same way: differences in the results are
the policies' own (common random numbers), and the lower bound is the same for all of them.

A pool task's VM is only known when it starts, and a step may run longer on some VMs (`vms:` in
its run times). Its first try is therefore drawn when it starts, for that VM, from the task's own
stream: whatever the policy, a pool task on a given VM runs for the same time, and whether it fails
does not depend on the VM at all. What is known beforehand (for the lower bound) is its shortest
run over its candidates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from testlab.domain.labfile import LabDef
from testlab.domain.statuses import TaskStatus
from testlab.sim.distributions import Distribution
from testlab.sim.targets import Pool, Pools, StepTargets, step_targets
from testlab.sim.workload import StepTimes, Workload

QUEUED = TaskStatus.QUEUED


@dataclass(slots=True, eq=False)
class SimJob:
    id: int
    template: str
    priority: int
    submitted: float
    steps: list[SimStep] = field(default_factory=list)
    status: str = QUEUED
    ended: float | None = None
    open_steps: int = 0  # steps not yet in a final status


@dataclass(slots=True, eq=False)
class SimStep:
    id: int
    job: SimJob
    name: str
    timeout: float
    times: StepTimes
    after: SimStep | None = None
    dependents: list[SimStep] = field(default_factory=list)
    tasks: list[SimTask] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # task status -> how many
    status: str = QUEUED


@dataclass(slots=True, eq=False)
class SimTask:
    id: int
    job: SimJob
    step: SimStep
    vm: str | None  # None: a pool task not running (its VM is chosen when it starts)
    # How long its first try runs (capped by the step's timeout), and how it ends when nothing
    # interrupts it: completed, failed or timeout. A pool task: its shortest run over its candidates,
    # and an outcome that is `completed` only if it completes on every one of them.
    run: float
    outcome: str
    status: str = QUEUED
    tries: int = 0
    ready: float | None = None  # when it could first run: job submitted and dependency completed
    started: float | None = None  # its first start
    ended: float | None = None
    pool: Pool | None = None  # a pool task: the VMs it may run on
    draw_key: str = ""  # a pool task: the name of its own random stream, for its first try


def first_try(task: SimTask, vm: str) -> tuple[float, str]:
    """(run time, outcome) of the task's first try on `vm`: the same for every policy."""
    if task.pool is None:
        return task.run, task.outcome
    return draw_pool_outcome(task.step.times, vm, task.step.timeout, task.draw_key)


def draw_pool_outcome(times: StepTimes, vm: str, timeout: float, key: str) -> tuple[float, str]:
    """(run time, outcome) of a pool task's first try on `vm`, from the task's stream `key`. Whether
    it fails is drawn first, so it is the same on every VM; the run time is the same quantile of
    each VM's distribution."""
    rng = random.Random(key)
    failed = times.fail > 0 and rng.random() < times.fail
    run = times.for_vm(vm).draw(rng)
    if run >= timeout:
        return timeout, TaskStatus.TIMEOUT
    return run, TaskStatus.FAILED if failed else TaskStatus.COMPLETED


def _fastest(times: StepTimes, timeout: float, key: str, vms: tuple[str, ...]) -> tuple[float, str]:
    """What is known of a pool task before it starts: its shortest run over the VMs `vms` (one per
    distinct run-time distribution), and `completed` only if it completes on each."""
    draws = [draw_pool_outcome(times, vm, timeout, key) for vm in vms]
    outcome = next((o for _, o in draws if o != TaskStatus.COMPLETED), TaskStatus.COMPLETED)
    return min(run for run, _ in draws), outcome


def _distinct(times: StepTimes, pool: Pool) -> tuple[str, ...]:
    """One VM of `pool` for each distinct run-time distribution of the step on its VMs."""
    seen: dict[Distribution, str] = {}
    for vm in pool.vms:
        seen.setdefault(times.for_vm(vm), vm)
    return tuple(seen.values())


def draw_outcome(times: StepTimes, vm: str, timeout: float, rng: random.Random) -> tuple[float, str]:
    """(run time, outcome) of one try of a task on `vm`."""
    run = times.for_vm(vm).draw(rng)
    failed = times.fail > 0 and rng.random() < times.fail
    if run >= timeout:
        return timeout, TaskStatus.TIMEOUT
    return run, TaskStatus.FAILED if failed else TaskStatus.COMPLETED


def generate_jobs(workload: Workload, lab: LabDef) -> list[SimJob]:
    """Every job of the workload, in arrival order (ties: template order), with ids 1, 2, ...

    Raises DefinitionError when a template's steps target VMs this lab does not have."""
    arrivals: list[tuple[float, int, int]] = []
    targets: list[dict[str, StepTargets]] = []
    pools = Pools(lab)
    distinct: dict[tuple[int, str], tuple[str, ...]] = {}
    for index, template in enumerate(workload.templates):
        targets.append(step_targets(template.job, lab, pools))
        for name, chosen in targets[-1].items():
            if chosen.pool is not None:
                distinct[index, name] = _distinct(template.steps[name], chosen.pool)
        rng = random.Random(f"{workload.seed}:arrivals:{index}")
        arrivals += [(t, index, k) for k, t in enumerate(template.arrivals.times(workload.duration, rng))]
    arrivals.sort()
    jobs: list[SimJob] = []
    step_id = task_id = 0
    for job_id, (submitted, index, k) in enumerate(arrivals, start=1):
        template = workload.templates[index]
        rng = random.Random(f"{workload.seed}:job:{index}:{k}")
        job = SimJob(id=job_id, template=template.name, priority=template.job.priority, submitted=submitted)
        by_name: dict[str, SimStep] = {}
        for definition in template.job.ordered_steps():
            step_id += 1
            times = template.steps[definition.name]
            step = SimStep(step_id, job, definition.name, definition.timeout, times)
            if definition.after is not None:
                step.after = by_name[definition.after]
                step.after.dependents.append(step)
            chosen = targets[index][definition.name]
            for vm in chosen.vms:
                task_id += 1
                run, outcome = draw_outcome(times, vm, definition.timeout, rng)
                step.tasks.append(SimTask(task_id, job, step, vm, run, outcome))
            for n in range(chosen.count):
                task_id += 1
                key = f"{workload.seed}:task:{index}:{k}:{definition.name}:{n}"
                run, outcome = _fastest(times, definition.timeout, key, distinct[index, definition.name])
                step.tasks.append(
                    SimTask(task_id, job, step, None, run, outcome, pool=chosen.pool, draw_key=key)
                )
            step.counts = {QUEUED: len(step.tasks)}
            by_name[definition.name] = step
            job.steps.append(step)
        job.open_steps = len(job.steps)
        jobs.append(job)
    return jobs
