"""Every health rule, proven with faults injected into a real lab (mission.md, "Health")."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from testlab.db.models import VM, Event
from testlab.db.session import session_scope
from testlab.hypervisor import open_backend
from tests.engine.harness import job_statuses, make_lab, submit, task_rows, vm_status, wait_for, wait_for_jobs

pytestmark = pytest.mark.slow

ONE_TASK = "name: j\nsteps:\n  - {{name: s, vms: [v1], run: '{run}', timeout: 60s}}\n"


def plan(tmp_path, *rules) -> dict[str, str]:
    return {
        "TESTLAB_FAULT_PLAN": json.dumps({"rules": list(rules), "state_file": str(tmp_path / "faults.json")})
    }


def notifications(settings) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Event.reason).where(Event.kind == "notify").order_by(Event.id)))


def vm_events(settings, name: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        vm_id = session.scalar(select(VM.id).where(VM.name == name))
        return list(session.scalars(select(Event.reason).where(Event.vm_id == vm_id).order_by(Event.id)))


def local_backend(tmp_path):
    return open_backend("local", "h1", f"local://{tmp_path / 'vms' / 'h1'}")


@pytest.fixture
def one_vm(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 0")


def test_failed_reverts_put_the_vm_offline_and_the_monitor_brings_it_back(
    settings, tmp_path, one_vm, engine_process
):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="echo ok"))
    engine = engine_process(
        plan(tmp_path, {"op": "revert", "action": "fail", "nth": 1, "times": 3, "error": "OperationFailed"})
    )
    wait_for(lambda: vm_status(settings, "v1")["status"] == "offline", 30, what="v1 offline")
    assert any("offline after 3 consecutive errors" in n for n in notifications(settings))
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert any("working again" in n for n in notifications(settings))
    task = task_rows(settings, job)[0]
    assert task["tries"] == 1, "revert failures must not use the task's tries"
    assert vm_status(settings, "v1")["errors"] == 0, "a successful task resets the error count"


def test_revert_past_its_deadline_counts_as_an_error(settings, tmp_path, one_vm, engine_process):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="echo ok"))
    engine = engine_process(
        {
            **plan(tmp_path, {"op": "revert", "action": "hang", "nth": 1, "seconds": 30}),
            "TESTLAB_REVERT_TIMEOUT": "2",
        }
    )
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert any("OperationTimedOut" in r and "error 1" in r for r in vm_events(settings, "v1"))


def test_revert_that_leaves_the_agent_dead_counts_as_an_error(settings, tmp_path, one_vm, engine_process):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="echo ok"))
    engine = engine_process(
        {
            **plan(tmp_path, {"op": "revert", "action": "broken_revert", "nth": 1}),
            "TESTLAB_AGENT_BOOT_TIMEOUT": "3",
        }
    )
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert any("revert failed" in r and "error 1" in r for r in vm_events(settings, "v1"))


def test_vm_powered_off_under_a_task_requeues_it_without_a_test_failure(
    settings, tmp_path, one_vm, engine_process
):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="sleep 3; echo done"))
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    time.sleep(0.5)
    local_backend(tmp_path).power_off("v1")
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    task = task_rows(settings, job)[0]
    assert task["tries"] == 2
    assert any("agent unreachable" in r or "lost the task" in r for r in vm_events(settings, "v1"))
    assert (settings.job_dir(job) / "tasks" / str(task["id"]) / "log").read_text().count("done") == 1


def test_boot_id_changed_under_a_task_requeues_it(settings, tmp_path, one_vm, engine_process):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="sleep 3"))
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    time.sleep(0.5)
    local_backend(tmp_path).revert("v1", "clean")
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert task_rows(settings, job)[0]["tries"] == 2


def test_past_the_try_limit_the_task_ends_boterror(settings, tmp_path, one_vm, engine_process):
    job = submit(settings, tmp_path, "j", ONE_TASK.format(run="sleep 30"))
    engine = engine_process({"TESTLAB_MAX_TRIES": "1"})
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    time.sleep(0.5)
    local_backend(tmp_path).power_off("v1")
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "boterror"}
    assert "after 1 tries" in task_rows(settings, job)[0]["detail"]


def test_task_past_its_timeout_is_killed_and_ends_timeout(settings, tmp_path, one_vm, engine_process):
    job = submit(
        settings, tmp_path, "j", "name: j\nsteps:\n  - {name: s, vms: [v1], run: sleep 60, timeout: 2s}\n"
    )
    engine = engine_process()
    started = time.monotonic()
    assert wait_for_jobs(settings, [job], 30, engine) == {job: "timeout"}
    assert time.monotonic() - started < 20
    assert vm_status(settings, "v1")["errors"] == 0
    assert job_statuses(settings) == {job: "timeout"}
