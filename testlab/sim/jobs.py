"""The simulated jobs: every arrival of every template, its steps and tasks, and their run times.

All of it is drawn before the simulation starts, from random streams that depend only on the seed
and on the job's place in the workload (template, arrival number), never on what the scheduler
does. Every policy compared on a workload therefore gets the very same jobs, arriving at the same
times, whose tasks run for the same times and fail the same way: differences in the results are
the policies' own (common random numbers), and the lower bound is the same for all of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from testlab.domain.labfile import LabDef
from testlab.domain.statuses import TaskStatus
from testlab.sim.targets import step_targets
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
    vm: str
    run: float  # how long its first try runs (capped by the step's timeout)
    outcome: str  # how its first try ends when nothing interrupts it: completed, failed or timeout
    status: str = QUEUED
    tries: int = 0
    ready: float | None = None  # when it could first run: job submitted and dependency completed
    started: float | None = None  # its first start
    ended: float | None = None


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
    targets = []
    for index, template in enumerate(workload.templates):
        targets.append(step_targets(template.job, lab))
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
            for vm in targets[index][definition.name]:
                task_id += 1
                run, outcome = draw_outcome(times, vm, definition.timeout, rng)
                step.tasks.append(SimTask(task_id, job, step, vm, run, outcome))
            step.counts = {QUEUED: len(step.tasks)}
            by_name[definition.name] = step
            job.steps.append(step)
        job.open_steps = len(job.steps)
        jobs.append(job)
    return jobs
