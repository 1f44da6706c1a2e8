"""Every fault is charged to its owner: a reboot is not a test failure, a host's trouble is not its VMs',
the engine's full disk is nobody's; a host short of disk takes no new revert."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from testlab.db.models import VM, Event, Host, VMUse
from testlab.db.session import session_scope, upgrade
from testlab.domain.labfile import parse_lab_text
from testlab.services.lab import apply_lab
from tests.engine.harness import (
    EngineProcess,
    make_lab,
    power_off_lab,
    submit,
    task_rows,
    vm_status,
    wait_for,
    wait_for_jobs,
)
from tests.support.postgres import free_port
from tests.support.tmpfs import small_filesystem

pytestmark = pytest.mark.slow

AGENTHOST = Path(__file__).resolve().parents[1] / "data" / "command-backend" / "agenthost.py"
# The first try of the task runs long (a mark outside the VM says it ran); later tries end at once.
STEP = "if [ -e {marks}/$TESTLAB_TASK ]; then echo again; else touch {marks}/$TESTLAB_TASK; sleep 60; fi"
JOB = "name: j\nsteps:\n  - {{name: s, vms: [p1], run: '{run}', timeout: 120s}}\n"


def notifications(settings) -> list[str]:
    with session_scope(settings.database_url, readonly=True) as session:
        return list(session.scalars(select(Event.reason).where(Event.kind == "notify").order_by(Event.id)))


def events_of(settings, vm: str) -> list[str]:
    with session_scope(settings.database_url, readonly=True) as session:
        vm_id = session.scalar(select(VM.id).where(VM.name == vm))
        return list(session.scalars(select(Event.reason).where(Event.vm_id == vm_id).order_by(Event.id)))


@pytest.fixture
def physical_lab(settings, tmp_path):
    """One `command` host carrying a physical test machine with a real agent; its disk survives a
    power cycle, a revert reinstalls it."""
    state = tmp_path / "rack"
    state.mkdir()
    (state / "token").write_text("physical-secret\n")
    port = free_port()
    (state / "p1.json").write_text(json.dumps({"port": port}))
    run = f"{sys.executable} {AGENTHOST} {state}"
    lab = f"""\
hosts:
  - name: rack1
    backend: command
    uri: command://rack1
    agent_token_file: {state / "token"}
    limits: {{max_ready_when_idle: 0}}
    commands:
      power_on: {run} power_on {{domain}}
      power_off: {run} power_off {{domain}}
      state: {run} state {{domain}}
      revert: {run} revert {{domain}} {{snapshot}}
      power_cycle: {run} power_cycle
vms:
  - {{name: p1, host: rack1, snapshot: clean, agent: "http://127.0.0.1:{port}"}}
"""
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        apply_lab(session, parse_lab_text(lab, "physical lab", tmp_path))
    yield state
    subprocess.run([*run.split(), "power_off", "p1"], timeout=60)


@pytest.mark.parametrize("linger", [0, 3], ids=["prompt", "agents-back-first"])
def test_a_host_power_cycle_requeues_its_running_task_at_once(
    settings, tmp_path, physical_lab, engine_process, subprocess_env, linger
):
    """With `linger`, the power cycle command returns seconds after the agents are back: the engine
    sees the command lost before the power cycle's own transaction, and must not blame the VM."""
    (physical_lab / "power_cycle_linger").write_text(str(linger))
    marks = tmp_path / "marks"
    marks.mkdir()
    job = submit(settings, tmp_path, "j", JOB.format(run=STEP.format(marks=marks)))
    engine = engine_process({"TESTLAB_AGENT_RETRY_DEADLINE": "60"})
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 60, what="task running")
    time.sleep(1)
    cycled = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "testlab", "host", "power-cycle", "rack1"],
        env=subprocess_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_for(lambda: task_rows(settings, job)[0]["tries"] == 2, 20, what="the task's second try")
    assert time.monotonic() - cycled < 20, "requeued at once, not after the agent retry deadline"
    assert wait_for_jobs(settings, [job], 90, engine) == {job: "completed"}
    task = task_rows(settings, job)[0]
    assert task["tries"] == 2
    assert vm_status(settings, "p1")["errors"] == 0
    assert not any("error 1" in reason for reason in events_of(settings, "p1")), "the VM was not charged"
    with session_scope(settings.database_url) as session:  # a use of the machine outside any job
        uses = session.execute(select(VMUse.kind, VMUse.actor).order_by(VMUse.id)).all()
    assert ("power-cycle", "tester") in uses, uses


def test_a_reboot_under_a_running_command_is_not_a_test_failure(
    settings, tmp_path, physical_lab, engine_process
):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = submit(settings, tmp_path, "j", JOB.format(run=STEP.format(marks=marks)))
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 60, what="task running")
    time.sleep(1)
    # The machine reboots by itself (a crash, someone at the rack): the engine is not told.
    subprocess.run([sys.executable, str(AGENTHOST), str(physical_lab), "power_cycle"], check=True, timeout=60)
    assert wait_for_jobs(settings, [job], 90, engine) == {job: "completed"}
    assert task_rows(settings, job)[0]["tries"] == 2
    assert any(
        "rebooted under the command" in reason and "error 1" in reason for reason in events_of(settings, "p1")
    )


def test_an_unreachable_hypervisor_takes_its_host_down_and_no_vm_offline(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]}, limits="max_active: 2, max_running: 2")
    job = submit(settings, tmp_path, "j", "name: j\nsteps:\n  - {name: s, vms: [v1, v2], run: 'true'}\n")
    unreachable = {"op": "*", "action": "fail", "error": "HostUnreachable", "nth": 1, "times": 8}
    plan = {"rules": [unreachable], "state_file": str(tmp_path / "faults.json")}
    engine = engine_process({"TESTLAB_FAULT_PLAN": json.dumps(plan), "TESTLAB_HOST_CHECK_INTERVAL": "1"})
    wait_for(lambda: any("host h1 is down" in n for n in notifications(settings)), 60, what="host down")
    assert wait_for_jobs(settings, [job], 90, engine) == {job: "completed"}
    assert any("host h1 is working again" in n for n in notifications(settings))
    for vm in ("v1", "v2"):
        assert not any("offline" in reason for reason in events_of(settings, vm)), events_of(settings, vm)
        assert vm_status(settings, vm)["errors"] == 0
    assert all(t["tries"] == 1 for t in task_rows(settings, job)), "host errors use no try"


def test_a_host_short_of_disk_gets_no_new_revert_and_says_why(
    settings, tmp_path, engine_process, subprocess_env
):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 0")
    with session_scope(settings.database_url) as session:  # more than any disk has
        session.execute(update(Host).values(min_free_disk=1 << 60))
    engine = engine_process({"TESTLAB_HOST_CHECK_INTERVAL": "1"})
    wait_for(lambda: any("short of disk" in n for n in notifications(settings)), 30, what="the notification")
    job = submit(settings, tmp_path, "j", "name: j\nsteps:\n  - {name: s, vms: [v1], run: 'true'}\n")
    show = lambda: json.loads(  # noqa: E731
        subprocess.run(
            [sys.executable, "-m", "testlab", "job", "show", str(job), "--json"],
            env=subprocess_env,
            capture_output=True,
            check=True,
            timeout=60,
            text=True,
        ).stdout
    )
    wait_for(
        lambda: "takes no new revert" in (show()["steps"][0]["tasks"][0]["blocked"] or ""), 30, what="reason"
    )
    assert vm_status(settings, "v1")["status"] == "off"
    with session_scope(settings.database_url) as session:
        session.execute(update(Host).values(min_free_disk=1 << 20))
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    wait_for(lambda: any("free disk again" in n for n in notifications(settings)), 30, what="all clear")


def test_a_full_engine_disk_pauses_new_work_and_charges_no_vm(lab_db, tmp_path):
    home = tmp_path / "home"
    settings = type(lab_db.settings)(home=home, database_url=lab_db.settings.database_url)
    if settings.database_url.startswith("sqlite"):  # the database lives elsewhere than the full disk
        settings = type(settings)(home=home, database_url=f"sqlite:///{tmp_path / 'testlab.db'}")
    engine = None
    with small_filesystem(home, "24m"):
        try:
            make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
            marks = tmp_path / "marks"
            marks.mkdir()
            # The first try writes more output than the engine's disk has room for; later tries little.
            big = (
                f"if [ -e {marks}/first ]; then echo small; "
                f"else touch {marks}/first; head -c 12000000 /dev/zero; fi"
            )
            job = submit(settings, tmp_path, "j", JOB.replace("p1", "v1").format(run=big))
            filler = home / "filler"
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=16"], check=True, capture_output=True
            )
            limits = {"TESTLAB_ENGINE_MIN_FREE_DISK": "1000000", "TESTLAB_MAX_LOG_BYTES": "10000000"}
            engine = EngineProcess(settings, limits, log=tmp_path / "engine.log").start()
            wait_for(
                lambda: any("engine's disk" in n and "paused" in n for n in notifications(settings)),
                60,
                what="pause",
            )
            assert vm_status(settings, "v1")["errors"] == 0
            filler.unlink()
            assert wait_for_jobs(settings, [job], 90, engine) == {job: "completed"}
            assert any("engine's disk" in n and "resumed" in n for n in notifications(settings))
            assert task_rows(settings, job)[0]["tries"] == 1, "the engine's own trouble uses no try"
            assert not any("offline" in reason or "error 1" in reason for reason in events_of(settings, "v1"))
        finally:
            if engine is not None:
                engine.stop()
            power_off_lab(settings)


def test_a_task_that_fills_its_disk_fails_alone_and_the_vm_works_at_the_next_revert(
    settings, tmp_path, engine_process
):
    disks = tmp_path / "vms"
    with small_filesystem(disks, "40m"):
        engine = None
        try:
            make_lab(settings, disks, {"h1": ["v1"]}, limits="max_ready_when_idle: 0")
            fill = "dd if=/dev/zero of=big bs=1M count=200"
            first = submit(settings, tmp_path, "fill", JOB.replace("p1", "v1").format(run=fill))
            second = submit(
                settings, tmp_path, "after", JOB.replace("p1", "v1").format(run="echo fine > here")
            )
            engine = EngineProcess(settings, log=tmp_path / "engine.log").start()
            assert wait_for_jobs(settings, [first, second], 90, engine) == {
                first: "failed",
                second: "completed",
            }
            task = task_rows(settings, first)[0]
            assert task["tries"] == 1 and task["exit_code"] not in (0, None), task
            assert "the VM's disk was full" in task["detail"], task
            assert vm_status(settings, "v1")["errors"] == 0
            assert not any("offline" in reason or "error 1" in reason for reason in events_of(settings, "v1"))
        finally:
            if engine is not None:
                engine.stop()
            power_off_lab(settings)


def test_a_symlink_loop_in_the_artifacts_neither_hangs_nor_blames_the_vm(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    run = "mkdir -p out/a && ln -s ../../.. out/a/loop && echo made > out/a/file"
    job = submit(
        settings,
        tmp_path,
        "loop",
        f"name: loop\nsteps:\n  - {{name: s, vms: [v1], run: '{run}', artifacts: ['out/**']}}\n",
    )
    started = time.monotonic()
    engine = engine_process()
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert time.monotonic() - started < 30
    task = task_rows(settings, job)[0]
    artifacts = settings.job_dir(job) / "tasks" / str(task["id"]) / "artifacts"
    assert (artifacts / "out" / "a" / "file").read_text() == "made\n"
    assert vm_status(settings, "v1")["errors"] == 0


def test_too_many_artifacts_fail_the_task_not_the_vm(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    run = "mkdir out && cd out && seq 1 100001 | xargs touch"
    job = submit(
        settings,
        tmp_path,
        "many",
        f"name: many\nsteps:\n  - {{name: s, vms: [v1], run: '{run}', artifacts: ['out/*'], timeout: 5m}}\n",
    )
    engine = engine_process()
    assert wait_for_jobs(settings, [job], 180, engine) == {job: "failed"}
    task = task_rows(settings, job)[0]
    assert task["tries"] == 1 and "artifacts refused" in task["detail"], task
    assert vm_status(settings, "v1")["errors"] == 0
