"""Run several simulations of one lab and workload: the policies to compare, and the what-if variants.

Each run is named by its policy, with " (what-if)" added for the changed lab, and gives its
summary (testlab.sim.metrics) plus the raw result the HTML report plots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from testlab.domain.labfile import LabDef
from testlab.sim.bound import Bound, lower_bound
from testlab.sim.metrics import summarize
from testlab.sim.policies import Policy, get_policy
from testlab.sim.simulator import SimResult, Simulation
from testlab.sim.whatif import apply_what_if
from testlab.sim.workload import Workload

WHAT_IF_SUFFIX = " (what-if)"


@dataclass(frozen=True)
class RunSpec:
    name: str
    lab: LabDef
    workload: Workload
    policy: Policy


@dataclass
class Run:
    spec: RunSpec
    result: SimResult
    bound: Bound
    summary: dict


def run_specs(
    lab: LabDef, workload: Workload, policies: Sequence[str], what_ifs: Sequence[str] = ()
) -> list[RunSpec]:
    """The runs to make; ValueError (one line) for an unknown policy or a what-if that cannot apply."""
    chosen = [get_policy(name) for name in dict.fromkeys(policies)]
    specs = [RunSpec(p.name, lab, workload, p) for p in chosen]
    if what_ifs:
        changed_lab, changed_workload = lab, workload
        for text in what_ifs:
            changed_lab, changed_workload = apply_what_if(text, changed_lab, changed_workload)
        specs += [RunSpec(p.name + WHAT_IF_SUFFIX, changed_lab, changed_workload, p) for p in chosen]
    return specs


def run_all(
    specs: Sequence[RunSpec],
    *,
    until: float | None = None,
    progress: Callable[[RunSpec], Callable[[float], None] | None] | None = None,
) -> dict[str, Run]:
    """Simulate each spec in turn. `progress(spec)` may return a callback fed the simulated time."""
    runs: dict[str, Run] = {}
    for spec in specs:
        callback = progress(spec) if progress is not None else None
        result = Simulation(spec.lab, spec.workload, spec.policy, progress=callback, until=until).run()
        bound = lower_bound(result.jobs, spec.lab, spec.workload)
        runs[spec.name] = Run(spec, result, bound, summarize(result, bound, spec.lab))
    return runs
