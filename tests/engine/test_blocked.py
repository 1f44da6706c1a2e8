"""The reasons the scheduler finds for queued work that cannot run are stored and shown per task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.engine.harness import make_lab, submit, wait_for, wait_for_jobs

pytestmark = pytest.mark.slow


def show(env: dict[str, str], job: int, *extra: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "testlab", "job", "show", str(job), *extra],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def blocked(env: dict[str, str], job: int) -> list:
    view = json.loads(show(env, job, "--json"))
    return [task["blocked"] for step in view["steps"] for task in step["tasks"]]


def test_job_show_says_why_a_queued_task_waits(settings, tmp_path, engine_process, subprocess_env):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]}, limits="max_active: 2, max_running: 2")
    subprocess.run(
        [sys.executable, "-m", "testlab", "vm", "set", "v1", "--maintenance"], env=subprocess_env, check=True
    )
    job = submit(settings, tmp_path, "j", "name: j\nsteps:\n  - {name: s, vms: [v1, v2], run: 'true'}\n")
    engine = engine_process()
    wait_for(lambda: blocked(subprocess_env, job) == ["vm v1 is in maintenance", None], 30, what="the reason")
    assert "blocked: vm v1 is in maintenance" in show(subprocess_env, job)
    subprocess.run(
        [sys.executable, "-m", "testlab", "vm", "set", "v1", "--no-maintenance"],
        env=subprocess_env,
        check=True,
    )
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    assert blocked(subprocess_env, job) == [None, None]
