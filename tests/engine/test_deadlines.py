"""Deadlines that are real: a hung hypervisor call delays neither the engine's exit nor the database's
truth; a re-attached task keeps its original deadline; the engine holds no more sockets after many
tasks than after a few."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import DomainState
from tests.engine.harness import (
    EngineProcess,
    job_statuses,
    make_lab,
    submit,
    task_rows,
    vm_status,
    wait_for,
    wait_for_jobs,
)

pytestmark = pytest.mark.slow

ONE = "name: {name}\nsteps:\n  - {{name: s, vms: [v1], run: '{run}', timeout: {timeout}}}\n"


def hang_first_revert(tmp_path, seconds: float) -> dict[str, str]:
    rule = {"op": "revert", "action": "hang", "nth": 1, "seconds": seconds}
    plan = {"rules": [rule], "state_file": str(tmp_path / "faults.json")}
    return {"TESTLAB_FAULT_PLAN": json.dumps(plan), "TESTLAB_REVERT_TIMEOUT": "2"}


def test_a_hung_revert_does_not_delay_shutdown(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 0")
    submit(settings, tmp_path, "j", ONE.format(name="j", run="true", timeout="30s"))
    engine = engine_process(hang_first_revert(tmp_path, 30))
    wait_for(lambda: vm_status(settings, "v1")["status"] == "reverting", 30, what="the revert")
    time.sleep(3)  # the revert overran its deadline; its thread still hangs
    stopped = time.monotonic()
    engine.process.send_signal(signal.SIGTERM)
    engine.process.wait(timeout=30)
    assert time.monotonic() - stopped < 5, f"exit took {time.monotonic() - stopped:.1f} s"


def test_a_revert_that_ends_after_its_deadline_leaves_no_domain_running_behind_the_database(
    settings, tmp_path, engine_process
):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 0")
    job = submit(settings, tmp_path, "j", ONE.format(name="j", run="true", timeout="30s"))
    started = time.monotonic()
    engine = engine_process(hang_first_revert(tmp_path, 12))
    assert wait_for_jobs(settings, [job], 90, engine) == {job: "completed"}
    time.sleep(max(0.0, 14 - (time.monotonic() - started)))  # the hung revert has ended by now
    wait_for(lambda: vm_status(settings, "v1")["operation"] is None, 30, what="the VM at rest")
    backend = open_backend("local", "h1", f"local://{tmp_path / 'vms' / 'h1'}")
    for _ in range(20):  # the database and the domain agree, now and for a while
        status = vm_status(settings, "v1")["status"]
        running = backend.state("v1") == DomainState.RUNNING
        assert status != "off" or not running, "the database says off, the domain runs"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_reattached_task_times_out_at_its_original_deadline(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    job = submit(settings, tmp_path, "j", ONE.format(name="j", run="sleep 100", timeout="3s"))
    env = {"TESTLAB_TASK_MARGIN": "4"}  # the engine's own deadline: 7 s after the start
    first = EngineProcess(settings, env, log=tmp_path / "first.log").start()
    second = EngineProcess(settings, env, log=tmp_path / "second.log")
    stopped: list[int] = []
    try:
        wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
        start = time.monotonic()
        # Freeze the agent's supervisors: the agent can no longer enforce the timeout itself.
        with open(tmp_path / "vms" / "h1" / "v1" / "agent.json") as f:
            agent_pid = json.load(f)["pid"]
        wait_for(lambda: _children(agent_pid), 5, what="the command's supervisor")
        stopped = _children(agent_pid)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(max(0.0, 4 - (time.monotonic() - start)))
        first.kill()
        second.start()
        assert wait_for_jobs(settings, [job], 40, second) == {job: "timeout"}
        ended = time.monotonic() - start
        assert ended < 11, f"ended {ended:.1f} s after the start; the deadline was 7 s after it"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        first.stop()
        second.stop()
    assert job_statuses(settings, [job]) == {job: "timeout"}


def test_the_engine_holds_no_more_sockets_after_many_tasks(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]}, limits="max_active: 2, max_running: 2")
    engine = engine_process()

    def run(count: int) -> None:
        jobs = [
            submit(settings, tmp_path, f"j{count}-{n}", ONE.format(name=f"j{n}", run="true", timeout="30s"))
            for n in range(count)
        ]
        wait_for_jobs(settings, jobs, 120, engine)

    def open_files() -> int:
        """The floor of the engine's open files over 3 s: after the jobs end, the local backend may
        still be preparing a spare copy or boot (a child's pipes, the socket it hands over); those
        close by themselves, a leak stays."""
        counts = []
        for _ in range(30):
            counts.append(len(os.listdir(f"/proc/{engine.process.pid}/fd")))
            time.sleep(0.1)
        return min(counts)

    run(5)
    after_few = open_files()
    run(30)
    after_many = open_files()
    assert after_many <= after_few + 6, f"{after_few} open files after 5 tasks, {after_many} after 35"
