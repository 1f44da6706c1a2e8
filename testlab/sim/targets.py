"""Which VM each simulated task runs on: the one place the simulator decides it.

Today a step's tasks are fixed when the job is submitted: one task per named VM, or per enabled
base VM carrying all of the step's labels. That is exactly what the engine's submission does, so
the simulator asks the same function, `resolve_targets`, against the simulated lab.
"""

from __future__ import annotations

from testlab.domain.jobfile import JobDef, TargetVM, resolve_targets
from testlab.domain.labfile import LabDef
from testlab.domain.statuses import VMRole


def target_vms(lab: LabDef) -> list[TargetVM]:
    return [
        TargetVM(name=vm.name, role=vm.role, labels=frozenset(vm.labels), enabled=vm.role in VMRole.ENABLED)
        for vm in lab.vms
    ]


def step_targets(job: JobDef, lab: LabDef) -> dict[str, tuple[str, ...]]:
    """Step name -> the VMs it gets one task each on; DefinitionError (naming the job file's line)
    when a step's VMs or labels match nothing in this lab."""
    return resolve_targets(job, target_vms(lab))
