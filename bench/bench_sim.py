"""Scheduling quality and simulator speed, measured with the capacity simulator.

Quality: a week of the Wine-TestBot-like workload (examples/sim/wtb-*.yaml) at its normal load and
heavier, over several seeds, under testlab's scheduler, the same without preparing ahead, and a
plain FIFO that reverts on demand. Printed: job turnaround p50/p90 per policy, testlab's ratios to
the others (below 1: testlab is faster), and makespan over its lower bound.
Targets: makespan within 1.10 of the lower bound; p90 turnaround clearly better than FIFO under load.

Speed: a simulated week of the CI-like lab (50 hosts, 1,000 VMs, pull requests' smoke tests in
pools; examples/sim/ci-*.yaml) with testlab's scheduler (target: under a minute), and what planning
only the hosts that changed (with their group while a pool task is queued on it) saves against
planning the whole lab after every change.

Run: python bench/bench_sim.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from testlab.domain.labfile import parse_lab
from testlab.sim.policies import POLICIES
from testlab.sim.runner import run_all, run_specs
from testlab.sim.simulator import Simulation
from testlab.sim.workload import parse_workload

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sim"
WEEK = 7 * 86400.0
LOADS = (1.0, 1.5, 2.0)
SEEDS = (1, 2, 3)
POLICY_NAMES = ("testlab", "no-prepare", "fifo")


def quality(days: float, seeds: tuple[int, ...]) -> bool:
    lab = parse_lab(EXAMPLES / "wtb-lab.yaml")
    base = parse_workload(EXAMPLES / "wtb-workload.yaml").with_duration(days * 86400)
    print(f"== quality: Wine-TestBot-like lab, {days:g} days of arrivals, seeds {list(seeds)}")
    print(
        f"{'load':>5} {'busy':>5}  "
        + "  ".join(f"{name + ' p50/p90':>22}" for name in POLICY_NAMES)
        + f"  {'p50 vs fifo':>11} {'p90 vs fifo':>11} {'p50 vs no-prep':>14} {'p90 vs no-prep':>14}"
        + f"  {'makespan/bound':>14}"
    )
    ok = True
    for load in LOADS:
        per: dict[str, dict[str, list[float]]] = {
            n: {"p50": [], "p90": [], "ratio": [], "busy": []} for n in POLICY_NAMES
        }
        for seed in seeds:
            workload = base.with_seed(seed).scaled(load)
            for name, run in run_all(run_specs(lab, workload, POLICY_NAMES)).items():
                s = run.summary
                per[name]["p50"].append(s["turnaround_p50"])
                per[name]["p90"].append(s["turnaround_p90"])
                per[name]["ratio"].append(s["makespan_ratio"])
                per[name]["busy"].append(s["busy"])
        mean = {n: {k: statistics.fmean(v) for k, v in d.items()} for n, d in per.items()}
        t, f, n = mean["testlab"], mean["fifo"], mean["no-prepare"]
        worst_ratio = max(max(d["ratio"]) for d in per.values())
        print(
            f"{load:5.1f} {t['busy']:5.0%}  "
            + "  ".join(f"{mean[x]['p50'] / 60:9.1f}m/{mean[x]['p90'] / 60:8.1f}m" for x in POLICY_NAMES)
            + f"  {t['p50'] / f['p50']:11.2f} {t['p90'] / f['p90']:11.2f}"
            + f" {t['p50'] / n['p50']:14.2f} {t['p90'] / n['p90']:14.2f}"
            + f"  {max(per['testlab']['ratio']):14.3f}"
        )
        ok &= max(per["testlab"]["ratio"]) <= 1.10 and (load < 1.5 or t["p90"] < 0.9 * f["p90"])
        ok &= worst_ratio < 2
    print("targets (makespan <= 1.10 x bound; p90 < 0.9 x FIFO's under load):", "met" if ok else "NOT MET")
    return ok


def speed(days: float) -> bool:
    lab = parse_lab(EXAMPLES / "ci-lab.yaml")
    workload = parse_workload(EXAMPLES / "ci-workload.yaml").with_duration(days * 86400)
    print(f"\n== speed: CI-like lab, {len(lab.hosts)} hosts, {len(lab.vms)} VMs, {days:g} days of arrivals")
    started, cpu = time.perf_counter(), time.process_time()
    result = Simulation(lab, workload, POLICIES["testlab"]).run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    tasks = sum(len(s.tasks) for j in result.jobs for s in j.steps)
    print(
        f"testlab: {wall:.1f}s wall ({cpu:.1f}s CPU) for {result.end / 86400:.1f} simulated days: "
        f"{len(result.jobs)} jobs, {tasks} tasks, {result.events} events, {result.plan_calls} plan() calls "
        f"({1e6 * cpu / max(result.plan_calls, 1):.0f} us CPU per call, simulator included)"
    )
    short = workload.with_duration(2 * 3600)
    timings = {}
    for per_group in (True, False):
        cpu_start = time.process_time()
        run = Simulation(lab, short, POLICIES["testlab"], per_group=per_group).run()
        timings[per_group] = (time.process_time() - cpu_start, run.plan_calls)
    (fast, fast_calls), (slow, slow_calls) = timings[True], timings[False]
    print(
        f"same lab, 2 hours of arrivals: planning by host or group {fast:.2f}s CPU ({fast_calls} calls), "
        f"the whole lab after every change {slow:.2f}s CPU ({slow_calls} calls): {slow / fast:.0f}x"
    )
    target = 60.0 * days / 7
    print(f"target (a week in under a minute): {'met' if wall < target else 'NOT MET'}")
    return wall < target


def main() -> int:
    quick = "--quick" in sys.argv
    ok = quality(2 if quick else 7, SEEDS[:1] if quick else SEEDS)
    ok &= speed(1 if quick else 7)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
