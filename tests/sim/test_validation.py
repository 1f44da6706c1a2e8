"""The simulator against the real thing: one small workload run by the engine on the local backend,
then simulated with what `export-workload` fitted from that run's history. The simulated job
turnaround must match the measured one (median within 15%), or capacity plans made with the
simulator cannot be trusted."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from testlab.db.models import Event, Job
from testlab.db.session import session_scope
from testlab.services.lab import export_lab
from testlab.sim.export import export_workload
from testlab.sim.metrics import percentile
from testlab.sim.policies import POLICIES
from testlab.sim.simulator import simulate
from testlab.sim.workload import parse_workload
from tests.engine.harness import EngineProcess, make_lab, power_off_lab, submit, wait_for, wait_for_jobs

pytestmark = pytest.mark.slow

# TestBot-like limits: one VM running and one reverting per host, no revert while something runs.
# Nothing is kept ready when idle, so the run starts, like the simulation, with every VM off.
LIMITS = (
    "max_active: 2, max_running: 1, max_reverting: 1, max_reverts_while_running: 0, max_ready_when_idle: 0"
)
JOB = """name: build and test
steps:
  - {name: build, vms: [build], run: sleep 1.0, timeout: 1m}
  - {name: test, after: build, vms: [t1, t2, t3], run: sleep 0.5, timeout: 1m}
"""
# Two bursts of four jobs: each burst is more than the lab can take at once, so jobs queue behind
# each other, then the queue drains (seconds after the first submission).
SUBMIT_AT = (0.0, 0.2, 0.4, 0.6, 9.0, 9.2, 9.4, 9.6)
JOBS = len(SUBMIT_AT)


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_simulated_turnaround_matches_a_real_run(lab_db, tmp_path):
    settings = lab_db.settings
    engine = EngineProcess(settings)
    try:
        real, lab, path = _real_run(settings, tmp_path, engine)
    finally:
        engine.stop()
        power_off_lab(settings)
    workload = parse_workload(path)
    result = simulate(lab, workload, POLICIES["testlab"])
    simulated = [job.ended - job.submitted for job in result.jobs if job.ended is not None]
    assert len(simulated) == JOBS

    real_p50, sim_p50 = percentile(real, 50), percentile(simulated, 50)
    error = abs(sim_p50 - real_p50) / real_p50
    print(f"turnaround p50: real {real_p50:.2f}s, simulated {sim_p50:.2f}s, error {100 * error:.1f}%")
    print(f"real {sorted(round(t, 2) for t in real)}\nsim  {sorted(round(t, 2) for t in simulated)}")
    print(path.read_text())
    assert error <= 0.15


def _real_run(settings, tmp_path, engine):
    """Run the workload with the engine; the measured turnarounds, the lab and the exported workload."""
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["build", "t1"], "h2": ["t2", "t3"]},
        limits=LIMITS,
        shared={"t3": ("t2", "other")},  # t2 and t3 take turns on one domain
    )
    engine.start()
    wait_for(lambda: _engine_started(settings), 30, what="the engine to start")
    first = time.monotonic()
    job_ids = []
    for n, offset in enumerate(SUBMIT_AT):
        time.sleep(max(0.0, first + offset - time.monotonic()))
        job_ids.append(submit(settings, tmp_path / "jobs", f"job{n}", JOB))
    statuses = wait_for_jobs(settings, job_ids, 150, engine)
    assert set(statuses.values()) == {"completed"}

    with session_scope(settings.database_url) as session:
        real = [(j.ended - j.submitted).total_seconds() for j in session.query(Job).order_by(Job.id)]
        lab = export_lab(session)
        path = export_workload(session, settings, tmp_path / "workload", replay=True)
    return real, lab, path


def _engine_started(settings) -> bool:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(Event.id).where(Event.kind == "engine").limit(1)) is not None
