"""Synthetic lab histories for comparing blame statistics: reused VMs, jobs of frequent and rare
innocent steps, flaky failures at a base rate, and one damaging step that breaks what later `test`
steps need until the next wipe."""

from __future__ import annotations

import random
from dataclasses import dataclass

from testlab.lifecycle.model import Lifecycle, Use, UseKind

DAMAGING = "scrub-tmp"


@dataclass(frozen=True)
class Workload:
    """A lab's history. Every job runs `build` then `test` on one VM, some also `lint` and `package`
    (frequent, innocent); a `damage_share` of the jobs also run the damaging step after their test.
    A task fails at `base_rate` by itself; a `test` on a damaged VM always fails. Each VM is wiped
    after `reuse` jobs. `rare_steps` innocent steps run once each, in one job, right before a failing
    task of another job (a coincidence the ranking must not fall for). `leak` is the chance that a
    `lint` step breaks the machine too: a frequent step that does a little harm."""

    jobs: int
    vms: int = 4
    reuse: tuple[int, int] = (3, 6)
    base_rate: float = 0.05
    damage_share: float = 0.1
    rare_steps: int = 1
    leak: float = 0.0
    seed: int = 1

    def lifecycles(self) -> list[Lifecycle]:
        rng = random.Random(self.seed)
        vms = [_VM(f"vm{i}", rng.randint(*self.reuse)) for i in range(self.vms)]
        rare_at = set(rng.sample(range(self.jobs // 2, self.jobs), self.rare_steps))
        rare_names = iter(f"rare{i}" for i in range(self.rare_steps))
        force_failure_on: _VM | None = None
        for job in range(1, self.jobs + 1):
            vm = rng.choice(vms) if force_failure_on is None else force_failure_on
            coincidence = force_failure_on is not None
            steps = ["build", "test"]
            if rng.random() < 0.5:
                steps.insert(1, "lint")
            if rng.random() < 0.3:
                steps.append("package")
            if coincidence:
                steps = ["build"]
            elif job in rare_at:
                steps = ["build", "test", next(rare_names)]
            elif rng.random() < self.damage_share:
                steps.append(DAMAGING)
            for step in steps:
                failed = rng.random() < self.base_rate or (step == "test" and vm.damaged)
                if force_failure_on is vm:
                    failed, force_failure_on = True, None
                vm.uses.append(
                    Use(UseKind.TASK, job=job, step=step, task=len(vm.uses), outcome=_outcome(failed))
                )
                if step == DAMAGING or (step == "lint" and rng.random() < self.leak):
                    vm.damaged = True
            if job in rare_at:
                force_failure_on = vm  # the next job's first task here fails, by chance
                continue
            vm.jobs += 1
            if vm.jobs >= vm.reuse or coincidence:
                vm.wipe(rng.randint(*self.reuse))
        for vm in vms:
            vm.wipe(0)
        return [lifecycle for vm in vms for lifecycle in vm.closed]


class _VM:
    def __init__(self, name: str, reuse: int) -> None:
        self.name, self.reuse = name, reuse
        self.uses: list[Use] = []
        self.closed: list[Lifecycle] = []
        self.damaged = False
        self.jobs = 0

    def wipe(self, reuse: int) -> None:
        if self.uses:
            self.closed.append(Lifecycle(self.name, tuple(self.uses)))
        self.uses, self.damaged, self.jobs, self.reuse = [], False, 0, reuse


def _outcome(failed: bool) -> str:
    return "failed" if failed else "completed"
