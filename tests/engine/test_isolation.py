"""One job cannot reach the next: what a task leaves running dies with its sandbox at the revert."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.engine.harness import make_lab, submit, task_rows, wait_for_jobs

pytestmark = pytest.mark.slow

# Leaves a daemon outside the task's session that writes the secret, by path, into whatever disk the
# VM has for the next 20 seconds: the next job's, if it survives the revert.
DAEMON = """disk=$(cd .. && pwd -P)
setsid sh -c 'i=0; while [ $i -lt 80 ]; do sleep 0.25; echo "$SECRET" >> "$0/leaked.txt"; i=$((i+1)); done' \\
    "$disk" > /dev/null 2>&1 &
sleep 1  # until the daemon has left the task's process group, which dies with the task
echo daemon started
"""

CHECK = """sleep 3
if [ -e ../leaked.txt ]; then echo "leaked: $(head -n 1 ../leaked.txt)"; exit 1; fi
echo clean
"""

JOB = """name: {name}
priority: {priority}
steps:
  - name: s
    vms: [v1]
    files: [{script}]
    run: sh {script}
    timeout: 60s
{env}"""


def secret_holders(secret: str) -> list[str]:
    """Live processes of this machine whose environment holds the secret."""
    needle = f"SECRET={secret}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(entry.name)
            except OSError:
                continue
    return found


def test_a_daemon_left_by_one_job_does_not_reach_the_next(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_ready_when_idle: 0")
    secret = secrets.token_hex(12)
    first = submit(
        settings,
        tmp_path,
        "first",
        JOB.format(name="first", priority=10, script="daemon.sh", env=f"    env: {{SECRET: '{secret}'}}\n"),
        files={"daemon.sh": DAEMON},
    )
    second = submit(
        settings,
        tmp_path,
        "second",
        JOB.format(name="second", priority=20, script="check.sh", env=""),
        files={"check.sh": CHECK},
    )
    engine = engine_process()
    assert wait_for_jobs(settings, [first, second], 90, engine) == {first: "completed", second: "completed"}

    logs = {
        job: (settings.job_dir(job) / "tasks" / str(task_rows(settings, job)[0]["id"]) / "log").read_text()
        for job in (first, second)
    }
    assert "daemon started" in logs[first]
    assert "clean" in logs[second] and secret not in logs[second]
    assert secret_holders(secret) == []
    disk = tmp_path / "vms" / "h1" / "v1" / "disk"  # the second job's disk: nothing reverted it since
    assert (disk / f"task-{task_rows(settings, second)[0]['id']}").is_dir()
    assert [p for p in disk.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
