"""Blame statistics compared on synthetic workloads; `python -m tests.lifecycle.compare` prints the
table docs/lifecycle.md shows, and tests/lifecycle/test_statistics.py checks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from testlab.lifecycle.blame import blame
from tests.lifecycle.scorers import STATISTICS
from tests.lifecycle.workloads import DAMAGING, Workload


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[int], Workload]
    seeds: int = 20


FAMILIES = [
    Family("50 jobs, 4 VMs wiped every 3-6 jobs", lambda seed: Workload(jobs=50, seed=seed)),
    Family(
        "60 jobs, 6 VMs wiped every 2-3 jobs, 2 rare steps",
        lambda seed: Workload(jobs=60, vms=6, reuse=(2, 3), rare_steps=2, seed=seed),
    ),
    Family(
        "200 jobs, 30 % of tasks fail anyway",
        lambda seed: Workload(jobs=200, base_rate=0.3, damage_share=0.05, seed=seed),
    ),
    Family(
        "100 jobs, 2 VMs wiped every 10-30 jobs",
        lambda seed: Workload(jobs=100, vms=2, reuse=(10, 30), base_rate=0.1, damage_share=0.03, seed=seed),
    ),
    Family(
        "2,000 jobs, damaging step in 0.2 %, lint breaks the VM 10 % of the time",
        lambda seed: Workload(jobs=2000, reuse=(4, 8), damage_share=0.002, leak=0.1, seed=seed),
        seeds=10,
    ),
]


@dataclass
class Outcome:
    """Over a family's workloads in which the damaging step had followers (`workloads`): in how many
    a statistic ranked it first, and in how many it ranked a rare innocent step above it."""

    workloads: int = 0
    first: int = 0
    rare_above: int = 0


def compare() -> dict[str, dict[str, Outcome]]:
    results: dict[str, dict[str, Outcome]] = {}
    for family in FAMILIES:
        outcomes = results[family.name] = {name: Outcome() for name in STATISTICS}
        for seed in range(1, family.seeds + 1):
            lifecycles = family.make(seed).lifecycles()
            for name, score in STATISTICS.items():
                steps = [suspect.step for suspect in blame(lifecycles, score=score)]
                if DAMAGING not in steps:
                    continue  # it never had a follower: no statistic can rank it
                outcome = outcomes[name]
                outcome.workloads += 1
                outcome.first += steps[0] == DAMAGING
                above = steps[: steps.index(DAMAGING)]
                outcome.rare_above += any(step and step.startswith("rare") for step in above)
    return results


def table(results: dict[str, dict[str, Outcome]]) -> str:
    """Markdown: one row per statistic, one column per family, "first / workloads (rare above)"."""
    families = list(results)
    lines = [
        "| statistic | " + " | ".join(f"({i})" for i in range(1, len(families) + 1)) + " |",
        "|---|" + "---|" * len(families),
    ]
    for name in STATISTICS:
        cells = []
        for family in families:
            outcome = results[family][name]
            cell = f"{outcome.first}/{outcome.workloads}"
            if outcome.rare_above:
                cell += f" ({outcome.rare_above})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"({i}) {family}" for i, family in enumerate(families, start=1))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(compare()))
