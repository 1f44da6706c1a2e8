"""The engine rides out what is not its fault to stop for: a database outage and a failing round."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine.harness import check_history, make_lab, submit, task_rows, wait_for, wait_for_jobs

pytestmark = pytest.mark.slow

STEP = "echo start >> {marks}/$TESTLAB_TASK; sleep {seconds}; echo done"
JOB = "name: {name}\nsteps:\n  - {{name: s, vms: [{vm}], run: '{run}', timeout: 120s}}\n"


def marks(directory: Path) -> dict[int, int]:
    return {int(p.name): len(p.read_text().split()) for p in directory.iterdir()}


@pytest.mark.postgres
@pytest.mark.parametrize("lab_db", ["postgresql"], indirect=True)
def test_engine_rides_out_a_database_outage_with_tasks_running(
    settings, tmp_path, engine_process, postgres_server
):
    marked = tmp_path / "marks"
    marked.mkdir()
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["v1", "v2"]},
        limits="max_active: 2, max_running: 2, max_reverting: 2",
    )
    jobs = [
        submit(
            settings, tmp_path, name, JOB.format(name=name, vm=vm, run=STEP.format(marks=marked, seconds=12))
        )
        for name, vm in (("one", "v1"), ("two", "v2"))
    ]
    engine = engine_process()
    wait_for(
        lambda: all(task_rows(settings, j)[0]["status"] == "running" for j in jobs),
        30,
        what="both tasks running",
    )
    postgres_server.pause()
    try:
        time.sleep(20)
        assert engine.alive(), engine.log.read_text()[-3000:]
    finally:
        postgres_server.resume()
    assert wait_for_jobs(settings, jobs, 90, engine) == dict.fromkeys(jobs, "completed")
    for job in jobs:
        task = task_rows(settings, job)[0]
        assert task["tries"] == 1, task  # re-attached, not restarted
    assert set(marks(marked).values()) == {1}, "no command ran twice"
    log = engine.log.read_text()
    assert "Traceback" not in log
    assert len(log.splitlines()) < 60, log
    assert "database unreachable" in log and "database back" in log
    check_history(settings)


def test_engine_survives_a_round_that_raises(settings, tmp_path, engine_process):
    token = tmp_path / "agent.token"
    token.write_text("secret\n")
    vms = tmp_path / "vms"
    make_lab(settings, vms, {"h1": ["v1"]})
    # A second host whose token file vanishes while the engine runs: its settings become unusable.
    from testlab.db.models import Host
    from testlab.db.session import session_scope

    with session_scope(settings.database_url) as session:
        session.add(
            Host(
                name="h2",
                backend="command",
                uri="command://h2",
                status="up",
                description="",
                max_active=1,
                max_running=1,
                max_reverting=1,
                max_reverts_while_running=0,
                max_ready_when_idle=0,
                sleep_after_revert=0.0,
                commands={},
                agent_token_file=str(token),
                retired=False,
            )
        )
    engine = engine_process()
    first = submit(settings, tmp_path, "first", JOB.format(name="first", vm="v1", run="echo one"))
    assert wait_for_jobs(settings, [first], 60, engine) == {first: "completed"}
    token.unlink()
    time.sleep(2)
    second = submit(settings, tmp_path, "second", JOB.format(name="second", vm="v1", run="echo two"))
    assert wait_for_jobs(settings, [second], 60, engine) == {second: "completed"}
    assert engine.alive()
    log = engine.log.read_text()
    assert "Traceback" not in log
    assert sum("agent.token" in line for line in log.splitlines()) == 1, log
