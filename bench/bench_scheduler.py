"""Time planning over labs of 100, 1,000 and 10,000 VMs with ten times as many queued tasks.

Hosts hold about ten VMs each, one VM in five shares its domain with its neighbour, statuses are
mixed. Snapshots are built before timing. The headline figure times plan() on the snapshot the
engine passes: only the queue heads (`queue_heads`: per VM its first runnable task and any
next-step task ahead of it), which the engine reads as such from the database and builds as new
objects. For comparison it also times plan() on the whole queue (the same plan, checked here) and
`queue_heads` itself in Python over the whole queue, which the engine does not run (the database
trims the queue).

The engine plans round after round with `plan_round`, which plans again only the hosts that changed
since the last round (testlab/scheduler/rounds.py). The second table times that: the lab is first
run for a few rounds with every plan carried out (the VMs acted on busy, started tasks gone from the
queue) until its plans are quiet, then one running task ends (its VM dirty) and the round after it
is timed, views of what did not change being the same objects, as the engine passes them. That
round is what the engine runs after each change; the target applies to it. A whole-lab plan() is
what a first round costs (or one where every host changed).
Run: python bench/bench_scheduler.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the scheduler tests apply a plan

from testlab.scheduler import (
    HostLimits,
    HostView,
    Plan,
    Snapshot,
    StartTask,
    TaskView,
    VMView,
    plan,
    queue_heads,
)
from testlab.scheduler.rounds import Carried, plan_round
from tests.unit.scheduler import apply

SIZES = (100, 1_000, 10_000)
RUNS = 7
TARGET_MS = 10.0  # median of a round's planning at 10,000 VMs / 100,000 queued tasks
SETTLE_ROUNDS = 6

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


def settle(whole: Snapshot) -> tuple[Snapshot, tuple[TaskView, ...], Carried, int]:
    """The lab after a few rounds whose plans were all carried out, its whole queue, the last
    round's carried state and the number of actions of that round."""
    queue = whole.tasks
    snapshot = replace(whole, tasks=queue_heads(queue))
    carried = None
    actions = 0
    for _ in range(SETTLE_ROUNDS):
        decided, carried = plan_round(snapshot, carried)
        actions = len(decided.actions)
        after = apply(snapshot, decided)
        vms = dict(snapshot.vms)
        for action in decided.actions:
            for name in (action.vm, getattr(action, "displace", None)):
                if name is not None:
                    vms[name] = replace(vms[name], status=after[name], busy=True)
        started = {a.task_id for a in decided.actions if isinstance(a, StartTask)}
        queue = tuple(t for t in queue if t.id not in started)
        snapshot = Snapshot(snapshot.now + 1, snapshot.hosts, vms, queue_heads(queue))
    return snapshot, queue, carried, actions


def measure_rounds(whole: Snapshot) -> tuple[float, float, float, int]:
    """Median ms of the round after one running task ended (its VM dirty; a different VM each run),
    of the round after one task started (its VM running, the VM's next task the new head of the
    queue), of a whole-lab plan() on the same snapshots, and the actions of the last settling round."""
    settled, queue, carried, actions = settle(whole)
    rng = random.Random(7)
    running = sorted(name for name, vm in settled.vms.items() if vm.status == "running")
    pinned = [t for t in settled.tasks if t.vm is not None]
    ended, started, wholes = [], [], []
    for run in range(2 * RUNS):
        vms = dict(settled.vms)
        tasks = settled.tasks
        if run % 2 == 0:
            name = rng.choice(running)
            vms[name] = replace(vms[name], status="dirty", busy=False)
        else:
            head = rng.choice(pinned)
            vms[head.vm] = replace(vms[head.vm], status="running", busy=True)
            tasks = queue_heads(t for t in queue if t is not head)
        changed = Snapshot(settled.now + 1, settled.hosts, vms, tasks)
        start = time.perf_counter()
        decided, _ = plan_round(changed, carried)
        middle = time.perf_counter()
        expected = plan(changed)
        wholes.append(time.perf_counter() - middle)
        (ended if run % 2 == 0 else started).append(middle - start)
        if decided.actions != expected.actions or dict(decided.blocked) != dict(expected.blocked):
            raise SystemExit(f"plan_round differs from plan() at {len(whole.vms)} VMs")
    return (
        statistics.median(ended) * 1000,
        statistics.median(started) * 1000,
        statistics.median(wholes) * 1000,
        actions,
    )


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
    print("median/min ms: plan() on the heads: a whole-lab round (the engine's first, or one where every")
    print("host changed). whole ms: plan() on the whole queue (same plan). heads ms: queue_heads in Python")
    print("over the whole queue (the engine has the database do it). bare pass ms: one loop reading each")
    print("queued task, what memory alone costs at this size.")
    print("Sizes grow tenfold: 'x prev' near 10 is linear growth.")
    print()
    print("A round after one task ended or one started (plan_round, what the engine runs), on a settled lab")
    print(
        f"{'VMs':>7} {'ended ms':>9} {'started ms':>11} {'whole-lab plan() ms':>20} {'ratio':>6}"
        f" {'settled (last actions)':>23}"
    )
    last_round = 0.0
    for size in SIZES:
        ended_ms, started_ms, whole_ms, actions = measure_rounds(build(size))
        round_ms = max(ended_ms, started_ms)
        print(
            f"{size:>7} {ended_ms:>9.2f} {started_ms:>11.2f} {whole_ms:>20.2f} {whole_ms / round_ms:>5.1f}x"
            f" {actions:>23}"
        )
        last_round = round_ms
    verdict = "met" if last_round <= TARGET_MS else "MISSED"
    print(
        f"target at {SIZES[-1]} VMs: {verdict} (a round, the slower kind: {last_round:.1f} ms median,"
        f" {last_round / TARGET_MS:.2f}x the {TARGET_MS:g} ms target; whole-lab plan(): {last_median:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
