"""Engine latencies and start-up cost, with real sandbox VMs and agents. Not a test: prints numbers.

1. VM idle -> next task's command running: one VM, a queue of tasks for it; each task ends, the VM
   is reverted, becomes idle, and the next command starts. Measured from the `idle` event in the
   history to the moment the command itself records it started.
2. Job submitted -> command running on an already idle VM.
3. Start-up reconciliation with 10,000 jobs in the database (plus 20 queued), and the first
   planning round after it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test harness builds the lab

from testlab.config import Settings
from testlab.db.models import VM, Event, Job, Step, Task, utcnow
from testlab.db.session import session_scope
from testlab.engine import reading
from testlab.engine.connections import Connections
from testlab.engine.daemon import Engine
from testlab.engine.database import EngineDatabase
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from testlab.engine.reconcile import reconcile
from testlab.scheduler import plan
from tests.engine.harness import make_lab, power_off_lab, submit

TASKS = 10


def _stamp_job(stamps: Path, n: int) -> str:
    run = f"date +%s.%N > {stamps}/$TESTLAB_TASK"
    return f"name: latency {n}\nsteps:\n  - {{name: s, vms: [v1], run: '{run}'}}\n"


def _utc_epoch(naive) -> float:
    from datetime import UTC

    return naive.replace(tzinfo=UTC).timestamp()


async def _run_engine_until(settings: Settings, condition, timeout: float = 120) -> None:
    engine = Engine(settings, EngineOptions())
    deadline = time.monotonic() + timeout
    await engine.run(until=lambda: condition() or time.monotonic() > deadline)


def latency_idle_to_start(root: Path) -> list[float]:
    settings = Settings(home=root / "home1", database_url=f"sqlite:///{root / 'home1' / 'testlab.db'}")
    make_lab(settings, root / "vms1", {"h1": ["v1"]}, limits="max_active: 1, max_ready_when_idle: 0")
    stamps = root / "stamps1"
    stamps.mkdir()
    ids = [submit(settings, root / "jobs1", f"j{n}", _stamp_job(stamps, n)) for n in range(TASKS)]

    def all_started() -> bool:
        return sum(1 for stamp in stamps.iterdir() if stamp.read_text().strip()) >= TASKS

    asyncio.run(_run_engine_until(settings, all_started))
    with session_scope(settings.database_url) as session:
        idle = [
            _utc_epoch(t)
            for t in session.scalars(
                select(Event.time).where(Event.kind == "vm", Event.new_status == "idle").order_by(Event.id)
            )
        ]
        tasks = session.scalars(select(Task.id).where(Task.job_id.in_(ids)).order_by(Task.id)).all()
    starts = [float((stamps / str(task)).read_text()) for task in tasks]
    power_off_lab(settings)
    return [start - became_idle for start, became_idle in zip(starts, idle, strict=False)]


def latency_submit_to_start(root: Path) -> list[float]:
    settings = Settings(home=root / "home2", database_url=f"sqlite:///{root / 'home2' / 'testlab.db'}")
    make_lab(settings, root / "vms2", {"h1": ["v1"]}, limits="max_active: 1, max_ready_when_idle: 1")
    stamps = root / "stamps2"
    stamps.mkdir()
    results = []

    async def main() -> None:
        engine = Engine(settings, EngineOptions())
        runner = asyncio.create_task(engine.run())

        def vm_idle() -> bool:
            with session_scope(settings.database_url) as session:
                return session.scalar(select(VM.status).where(VM.name == "v1")) == "idle"

        for n in range(TASKS):
            while not await asyncio.to_thread(vm_idle):
                await asyncio.sleep(0.02)
            submitted = time.time()
            job_id = await asyncio.to_thread(submit, settings, root / "jobs2", f"j{n}", _stamp_job(stamps, n))
            with session_scope(settings.database_url) as session:
                task_id = session.scalar(select(Task.id).where(Task.job_id == job_id))
            stamp = stamps / str(task_id)
            while not stamp.exists() or not stamp.read_text().strip():
                await asyncio.sleep(0.005)
            results.append(float(stamp.read_text()) - submitted)
        engine.stop()
        await runner

    asyncio.run(main())
    power_off_lab(settings)
    return results


RUNNING = 10  # tasks left running on live agents when the engine stops; as many VMs stay idle


def reconciliation(root: Path, jobs: int = 10_000) -> tuple[float, float, float]:
    """A restart under realistic state: 10,000 jobs of history, RUNNING commands still running on their
    agents (each must be found alive and re-attached) and RUNNING idle VMs (each agent asked)."""
    settings = Settings(home=root / "home3", database_url=f"sqlite:///{root / 'home3' / 'testlab.db'}")
    make_lab(
        settings,
        root / "vms3",
        {f"h{h}": [f"v{h}-{i}" for i in range(5)] for h in range(4)},
        limits="max_active: 5, max_running: 5, max_reverting: 5, max_reverts_while_running: 5, "
        "max_ready_when_idle: 5",
    )
    now = utcnow()
    with session_scope(settings.database_url) as session:
        vm_ids = session.scalars(select(VM.id)).all()
        session.execute(
            insert(Job),
            [
                {
                    "id": j,
                    "owner": "bench",
                    "name": f"job {j}",
                    "priority": 50,
                    "status": "completed",
                    "submitted": now,
                    "started": now,
                    "ended": now,
                    "description": "",
                    "cancel_requested": False,
                }
                for j in range(1, jobs + 1)
            ],
        )
        session.execute(
            insert(Step),
            [
                {
                    "id": j,
                    "job_id": j,
                    "number": 1,
                    "name": "s",
                    "command": "true",
                    "files": [],
                    "artifacts": [],
                    "env": {},
                    "timeout": 60.0,
                    "status": "completed",
                    "started": now,
                    "ended": now,
                }
                for j in range(1, jobs + 1)
            ],
        )
        session.execute(
            insert(Task),
            [
                {
                    "job_id": j,
                    "step_id": j,
                    "number": 1,
                    "vm_id": vm_ids[j % len(vm_ids)],
                    "status": "completed",
                    "timeout": 60.0,
                    "tries": 0,
                    "detail": "",
                    "started": now,
                    "ended": now,
                }
                for j in range(1, jobs + 1)
            ],
        )
    names = [f"v{h}-{i}" for h in range(4) for i in range(5)]
    long_jobs = [
        submit(
            settings,
            root / "jobs3",
            f"long{n}",
            f"name: long {n}\nsteps:\n  - {{name: s, vms: [{names[2 * n]}], run: 'sleep 300'}}\n",
        )
        for n in range(RUNNING)
    ]

    def settled() -> bool:
        with session_scope(settings.database_url, readonly=True) as session:
            statuses = list(session.scalars(select(VM.status)))
        return statuses.count("running") == RUNNING and statuses.count("idle") == len(names) - RUNNING

    asyncio.run(_run_engine_until(settings, settled))
    assert settled(), "the lab did not settle with tasks running and VMs idle"

    async def main() -> tuple[float, float, float]:
        options = EngineOptions()
        database, connections = EngineDatabase(settings.database_url), Connections(options)
        connections.configure(await database.read(reading.host_configs))
        started = time.perf_counter()
        await reconcile(database, Outcomes(settings, options), connections)
        reconciled = time.perf_counter() - started
        started = time.perf_counter()
        view = await database.read(reading.read_round, options, frozenset(), time.time())
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        plan(view.snapshot)
        planned = time.perf_counter() - started
        await connections.aclose()
        database.close()
        return reconciled, loaded, planned

    try:
        result = asyncio.run(main())
        with session_scope(settings.database_url, readonly=True) as session:
            alive = session.scalar(select(func.count()).select_from(Task).where(Task.status == "running"))
        assert alive == RUNNING, f"reconciliation lost live tasks: {alive} of {RUNNING} still running"
        assert len(long_jobs) == RUNNING
        return result
    finally:
        power_off_lab(settings)


def _ms(values: list[float]) -> str:
    values = sorted(values)
    return (
        f"median {statistics.median(values) * 1000:6.1f} ms  min {values[0] * 1000:6.1f} ms  "
        f"max {values[-1] * 1000:6.1f} ms  (n={len(values)})"
    )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    print("engine latencies, local sandbox VMs, SQLite")
    print(f"  VM idle -> next command running:     {_ms(latency_idle_to_start(root))}")
    print(f"  job submitted -> command running:    {_ms(latency_submit_to_start(root))}")
    reconciled, loaded, planned = reconciliation(root)
    print(f"start-up with 10,000 jobs in the database, {RUNNING} tasks on live agents, {RUNNING} idle VMs")
    print(f"  reconciliation (every agent asked):  {reconciled * 1000:6.1f} ms")
    print(f"  first snapshot read:                 {loaded * 1000:6.1f} ms")
    print(f"  first plan():                        {planned * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
