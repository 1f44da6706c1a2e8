"""Which VMs each simulated task may run on: the one place the simulator decides it.

A step's tasks are fixed when the job is submitted: one task per named VM, or per enabled base VM
carrying all of the step's labels, or, for a pool step (`labels` with `count: N`), N tasks that each
run on whichever of those VMs is free first. That is exactly what the engine's submission does, so
the simulator asks the same function, `resolve_targets`, against the simulated lab. A pool task's
candidates are chosen by the same rule the engine applies when it reads the queue (`selected_by`),
and, as there, every pool with the same labels shares one tuple of candidates: the scheduler keys
a pool by that tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testlab.domain.jobfile import JobDef, TargetVM, resolve_targets, selected_by
from testlab.domain.labfile import LabDef
from testlab.domain.statuses import VMRole


@dataclass(frozen=True, eq=False)
class Pool:
    """The VMs a pool step's tasks may run on: the base VMs carrying all of `labels`, by name."""

    labels: tuple[str, ...]
    vms: tuple[str, ...]
    members: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.vms))


@dataclass(frozen=True)
class StepTargets:
    """A step's tasks: one on each of `vms`, or, for a pool step, `count` tasks on any of `pool`."""

    vms: tuple[str, ...] = ()
    pool: Pool | None = None
    count: int = 0


class Pools:
    """The pools of one lab, one per distinct label set, so that all their tasks share a tuple."""

    def __init__(self, lab: LabDef) -> None:
        self.lab = lab
        self.by_labels: dict[tuple[str, ...], Pool] = {}

    def get(self, labels: tuple[str, ...]) -> Pool:
        key = tuple(sorted(set(labels)))
        pool = self.by_labels.get(key)
        if pool is None:
            vms = tuple(sorted(vm.name for vm in self.lab.vms if selected_by(key, vm.labels, vm.role)))
            pool = self.by_labels[key] = Pool(key, vms)
        return pool


def target_vms(lab: LabDef) -> list[TargetVM]:
    return [
        TargetVM(name=vm.name, role=vm.role, labels=frozenset(vm.labels), enabled=vm.role in VMRole.ENABLED)
        for vm in lab.vms
    ]


def step_targets(job: JobDef, lab: LabDef, pools: Pools | None = None) -> dict[str, StepTargets]:
    """Step name -> its tasks' targets; DefinitionError (naming the job file's line) when a step's
    VMs or labels match nothing in this lab. `pools`: shared across the jobs of one simulation."""
    pools = pools if pools is not None else Pools(lab)
    resolved = resolve_targets(job, target_vms(lab))
    targets = {}
    for step in job.steps:
        chosen = resolved[step.name]
        if step.count is not None:
            targets[step.name] = StepTargets(pool=pools.get(step.labels), count=len(chosen))
        else:
            targets[step.name] = StepTargets(vms=tuple(name for name in chosen if name is not None))
    return targets
