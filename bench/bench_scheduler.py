"""Time one plan() over labs of 100, 1,000 and 10,000 VMs with ten times as many queued tasks.

Hosts hold about ten VMs each, one VM in five shares its domain with its neighbour, statuses are
mixed. Snapshots are built before timing. The headline figure times plan() on the snapshot the
engine passes: only the queue heads (`queue_heads`: per VM its first runnable task and any
next-step task ahead of it), which the engine reads as such from the database and builds as new
objects. For comparison it also times plan() on the whole queue (the same plan, checked here) and
`queue_heads` itself in Python over the whole queue, which the engine does not run (the database
trims the queue). The target applies to the engine's snapshot.
Run: python bench/bench_scheduler.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import replace

from testlab.scheduler import HostLimits, HostView, Plan, Snapshot, TaskView, VMView, plan, queue_heads

SIZES = (100, 1_000, 10_000)
RUNS = 7
TARGET_MS = 10.0  # median of plan() on the engine's snapshot at 10,000 VMs / 100,000 queued tasks

STATUS_WEIGHTS = {
    "off": 40,
    "dirty": 10,
    "idle": 20,
    "running": 12,
    "reverting": 6,
    "sleeping": 2,
    "offline": 5,
    "maintenance": 5,
}


def build(n_vms: int, seed: int = 42) -> Snapshot:
    rng = random.Random(seed)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    hosts = [
        HostView(name=f"host{h:05d}", limits=HostLimits(max_active=4, max_running=2, max_reverting=2))
        for h in range(max(1, n_vms // 10))
    ]
    vms = []
    for i in range(n_vms):
        status = rng.choices(statuses, weights)[0]
        # one VM in five is a second snapshot of its neighbour's domain; keep such pairs consistent
        shared = i % 5 == 1 and vms and vms[-1].host == hosts[(i // 10) % len(hosts)].name
        if shared:
            status = "off"
        vms.append(
            VMView(
                name=f"vm{i:06d}",
                host=hosts[(i // 10) % len(hosts)].name,
                domain=f"dom{i - 1 if shared else i:06d}",
                status=status,
                role="base" if rng.random() < 0.7 else "extra",
                busy=status in ("running", "reverting") or rng.random() < 0.05,
                recent_demand=rng.randrange(10),
            )
        )
    tasks = [
        TaskView(
            id=t,
            vm=vms[rng.randrange(n_vms)].name,
            job_id=t // 5,
            priority=rng.randrange(4),
            step_id=t // 5 * 2 + (t % 2),
            stage=int(rng.random() < 0.3),
        )
        for t in range(10 * n_vms)
    ]
    return Snapshot.build(now=0.0, hosts=hosts, vms=vms, tasks=tasks)


def floor(snapshot: Snapshot) -> float:
    """Median ms of a bare pass reading each task's VM: what memory alone costs at this size."""
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for task in snapshot.tasks:
            task.vm  # noqa: B018
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000


def measure(snapshot: Snapshot) -> tuple[float, float, Plan]:
    timings = []
    result = plan(snapshot)
    for _ in range(RUNS):
        start = time.perf_counter()
        result = plan(snapshot)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000, min(timings) * 1000, result


def trimming(snapshot: Snapshot) -> tuple[float, Snapshot]:
    """Median ms of queue_heads over the whole queue, and the engine's snapshot: the heads as new
    objects, as the engine builds them from the rows it reads (not scattered among the whole queue's)."""
    timings = []
    heads = snapshot.tasks
    for _ in range(RUNS):
        start = time.perf_counter()
        heads = queue_heads(snapshot.tasks)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000, replace(snapshot, tasks=tuple(replace(t) for t in heads))


def main() -> int:
    print("plan() on the engine's snapshot (queue heads), then on the whole queue for comparison")
    print(
        f"{'VMs':>7} {'tasks':>8} {'heads':>7} {'median ms':>10} {'min ms':>8} {'actions':>8} {'x prev':>7}"
        f" {'whole ms':>9} {'heads ms':>9} {'bare pass ms':>13}"
    )
    previous = None
    last_median = 0.0
    for size in SIZES:
        snapshot = build(size)
        trim, engine_snapshot = trimming(snapshot)
        median, best, result = measure(engine_snapshot)
        whole, _, whole_result = measure(snapshot)
        if result != whole_result:
            print(f"the plan on the heads differs from the plan on the whole queue at {size} VMs")
            return 1
        bare = floor(snapshot)
        growth = f"{median / previous:6.1f}x" if previous else "      -"
        print(
            f"{size:>7} {len(snapshot.tasks):>8} {len(engine_snapshot.tasks):>7} {median:>10.2f} {best:>8.2f}"
            f" {len(result.actions):>8} {growth} {whole:>9.2f} {trim:>9.2f} {bare:>13.2f}"
        )
        previous, last_median = median, median
    print("median/min ms: plan() on the heads, what the engine runs. whole ms: plan() on the whole queue")
    print("(same plan). heads ms: queue_heads in Python over the whole queue (the engine has the database")
    print("do it). bare pass ms: one loop reading each queued task, what memory alone costs at this size.")
    print("Sizes grow tenfold: 'x prev' near 10 is linear growth.")
    verdict = "met" if last_median <= TARGET_MS else "MISSED"
    print(
        f"target at {SIZES[-1]} VMs: {verdict} ({last_median:.1f} ms median, {last_median / TARGET_MS:.2f}x"
        f" the {TARGET_MS:g} ms target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
