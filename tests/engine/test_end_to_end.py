"""The engine as a real process, local sandbox VMs with real agents, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from testlab.db.session import session_scope
from testlab.services.jobs import cancel_job
from tests.engine.harness import (
    EngineProcess,
    check_history,
    job_statuses,
    make_lab,
    submit,
    task_rows,
    vm_status,
    wait_for,
    wait_for_jobs,
)

pytestmark = pytest.mark.slow

BUILD_AND_TEST = """\
name: build and test
steps:
  - name: build
    vms: [{build}]
    files: [build.sh]
    run: sh build.sh
    artifacts: [out/*]
  - name: test
    after: build
    vms: {tests}
    run: test "$(cat out/product)" = "built on {build}" && echo "tested on $TESTLAB_VM"
    timeout: 30s
"""
BUILD = 'mkdir -p out && echo "built on $TESTLAB_VM" > out/product && echo building\n'


def test_jobs_run_end_to_end_with_artifacts_failures_and_timeouts(settings, tmp_path, engine_process):
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["a1", "a2", "a3"], "h2": ["b1", "b2"]},
        limits="max_active: 2, max_running: 2, max_reverting: 1, max_reverts_while_running: 1",
        shared={"a2": ("shared", "one"), "a3": ("shared", "two")},
    )
    good = submit(
        settings,
        tmp_path,
        "good",
        BUILD_AND_TEST.format(build="a1", tests="[a2, a3, b1, b2]"),
        {"build.sh": BUILD},
    )
    failing = submit(
        settings,
        tmp_path,
        "failing",
        "name: f\nsteps:\n  - {name: s, vms: [b1], run: exit 4}\n"
        "  - {name: t, after: s, vms: [b2], run: 'true'}\n",
    )
    hanging = submit(
        settings,
        tmp_path,
        "hanging",
        "name: h\nsteps:\n  - {name: s, vms: [a1], run: sleep 60, timeout: 2s}\n",
    )
    engine = engine_process()
    statuses = wait_for_jobs(settings, [good, failing, hanging], 120, engine)
    assert statuses == {good: "completed", failing: "failed", hanging: "timeout"}, task_rows(settings, good)
    assert [t["status"] for t in task_rows(settings, failing)] == ["failed", "skipped"]
    assert task_rows(settings, failing)[0]["exit_code"] == 4
    log = settings.job_dir(good) / "tasks"
    test_logs = [p.read_text() for p in log.glob("*/log")]
    assert any("building" in text for text in test_logs)
    assert sum("tested on" in text for text in test_logs) == 4
    assert (settings.job_dir(good) / "tasks").glob("*/artifacts/out/product")
    check_history(settings)


def test_first_task_starts_quickly_on_an_idle_vm(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 1, max_active: 1")
    engine_process()
    wait_for(lambda: vm_status(settings, "v1")["status"] == "idle", 30, what="v1 idle")
    submitted = time.monotonic()
    job = submit(settings, tmp_path, "quick", "name: q\nsteps:\n  - {name: s, vms: [v1], run: 'true'}\n")
    wait_for(lambda: task_rows(settings, job)[0]["status"] != "queued", 5, interval=0.01, what="task start")
    assert time.monotonic() - submitted < 1.0


def test_second_engine_refuses_to_start(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    first = engine_process()
    time.sleep(2)
    second = EngineProcess(settings, log=tmp_path / "second.log").start()
    second.process.wait(timeout=30)
    assert second.process.returncode == 1
    assert "another engine" in (tmp_path / "second.log").read_text()
    assert first.alive()


def test_cancel_kills_running_commands(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]}, limits="max_running: 2, max_active: 2")
    job = submit(
        settings,
        tmp_path,
        "long",
        "name: l\nsteps:\n  - {name: s, vms: [v1], run: sleep 120}\n"
        "  - {name: t, after: s, vms: [v2], run: 'true'}\n",
    )
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    time.sleep(0.5)
    with session_scope(settings.database_url) as session:
        cancel_job(session, job)
    assert wait_for_jobs(settings, [job], 30, engine) == {job: "canceled"}
    assert [t["status"] for t in task_rows(settings, job)] == ["canceled", "skipped"]


def test_maintenance_waits_for_the_running_task(settings, tmp_path, engine_process):
    from testlab.services.vms import get_vm, request_maintenance

    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    job = submit(settings, tmp_path, "m", "name: m\nsteps:\n  - {name: s, vms: [v1], run: sleep 2}\n")
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    with session_scope(settings.database_url) as session:
        request_maintenance(session, get_vm(session, "v1"))
    assert wait_for_jobs(settings, [job], 30, engine) == {job: "completed"}
    wait_for(lambda: vm_status(settings, "v1")["status"] == "maintenance", 10, what="maintenance")


def test_maintenance_with_abort_requeues_the_task(settings, tmp_path, engine_process):
    from testlab.services.vms import end_maintenance, get_vm, request_maintenance

    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    job = submit(settings, tmp_path, "m", "name: m\nsteps:\n  - {name: s, vms: [v1], run: sleep 60}\n")
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    with session_scope(settings.database_url) as session:
        request_maintenance(session, get_vm(session, "v1"), abort=True)
    wait_for(lambda: vm_status(settings, "v1")["status"] == "maintenance", 20, what="maintenance")
    task = task_rows(settings, job)[0]
    assert task["status"] == "queued" and task["tries"] == 0
    assert job_statuses(settings, [job]) == {job: "queued"}
    with session_scope(settings.database_url) as session:
        end_maintenance(session, get_vm(session, "v1"))
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task restarted")
    assert engine.alive()
