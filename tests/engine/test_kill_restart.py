"""Kill the engine with SIGKILL at random moments, dozens of times, during one workload, and restart it,
while an administrator keeps putting VMs in maintenance and back.

Promises checked (docs/engine.md, "Restart without harm"): every job still ends in its right status; no
command that was started is ever started twice (each command leaves one mark outside its VM when it
starts); no domain is used by two VMs at once and no host limit is exceeded (replayed from the event
history); no administrator's change is lost (each event starts from the status the one before left).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest

from testlab.db.session import Conflict, run_transaction
from testlab.services import vms as vm_service
from testlab.services.errors import UserError
from tests.engine.harness import (
    EngineProcess,
    check_history,
    job_statuses,
    make_lab,
    submit,
    task_rows,
    wait_for_jobs,
)
from tests.engine.test_concurrent_writers import replay

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("TESTLAB_TEST_KILLS", "24"))
JOBS = int(os.environ.get("TESTLAB_TEST_JOBS", "24"))

JOB = """\
name: job {n}
priority: {priority}
steps:
  - name: build
    vms: [{build}]
    files: [step.sh]
    run: sh step.sh {build_time} {build_exit}
    artifacts: [out/*]
  - name: test
    after: build
    vms: [{tests}]
    files: [step.sh]
    run: test -f out/product && sh step.sh {test_time} 0
    timeout: 60s
"""
STEP = """\
echo "$TESTLAB_TASK" >> {markers}/$TESTLAB_TASK
mkdir -p out && echo product > out/product
pause=$(awk "BEGIN{{print $1/5}}")
i=0; while [ $i -lt 5 ]; do echo "line $i of task $TESTLAB_TASK"; i=$((i+1)); sleep $pause; done
exit $2
"""


def test_engine_survives_sigkill_at_random_moments(settings, tmp_path):
    rng = random.Random(int(os.environ.get("TESTLAB_TEST_SEED", "7")))
    markers = tmp_path / "markers"
    markers.mkdir()
    hosts = {"h1": ["h1a", "h1b", "h1c"], "h2": ["h2a", "h2b", "h2c"], "h3": ["h3a", "h3b"]}
    make_lab(
        settings,
        tmp_path / "vms",
        hosts,
        limits="max_active: 2, max_running: 2, max_reverting: 1, max_reverts_while_running: 1",
        shared={"h1b": ("h1shared", "one"), "h1c": ("h1shared", "two")},
    )
    vms = [vm for names in hosts.values() for vm in names]
    expected = {}
    for n in range(JOBS):
        build_exit = 1 if n % 4 == 3 else 0
        job_id = submit(
            settings,
            tmp_path,
            f"job{n}",
            JOB.format(
                n=n,
                priority=rng.randint(1, 3),
                build=rng.choice(vms),
                build_exit=build_exit,
                build_time=round(rng.uniform(0.5, 2.0), 2),
                test_time=round(rng.uniform(0.5, 2.0), 2),
                tests=", ".join(rng.sample(vms, rng.randint(1, 3))),
            ),
            {"step.sh": STEP.format(markers=markers)},
        )
        expected[job_id] = "failed" if build_exit else "completed"

    stop = threading.Event()
    changes: list[str] = []

    def administrator() -> None:
        """Maintenance on and off on two VMs (never --abort: an aborted command is started again)."""
        admin_rng = random.Random(3)
        while not stop.is_set():
            vm = admin_rng.choice(["h2b", "h3a"])
            change = admin_rng.choice([vm_service.request_maintenance, vm_service.end_maintenance])
            try:
                changes.append(
                    run_transaction(
                        settings.database_url, lambda s, c=change, v=vm: c(s, vm_service.get_vm(s, v))
                    )
                )
            except (UserError, Conflict) as refused:
                changes.append(f"refused: {refused}")
            time.sleep(admin_rng.uniform(0.1, 0.6))

    admin = threading.Thread(target=administrator)
    admin.start()
    log = settings.home / "engine.log"
    kills = 0
    try:
        while kills < KILLS and any(
            s not in ("completed", "failed") for s in job_statuses(settings).values()
        ):
            engine = EngineProcess(settings, log=log).start()
            time.sleep(rng.uniform(0.3, 2.0))
            assert engine.alive(), log.read_text()[-3000:]
            engine.kill()
            kills += 1
    finally:
        stop.set()
        admin.join()
    for vm in ("h2b", "h3a"):
        run_transaction(settings.database_url, lambda s, vm=vm: _back_in_service(s, vm))
    assert any("maintenance" in change and "refused" not in change for change in changes), changes
    engine = EngineProcess(settings, log=log).start()
    try:
        statuses = wait_for_jobs(settings, list(expected), 240, engine)
    finally:
        engine.stop()

    assert statuses == expected, {j: task_rows(settings, j) for j in expected if statuses[j] != expected[j]}
    started = Counter()
    for path in markers.iterdir():
        started[int(path.name)] = len(path.read_text().split())
    for job_id in expected:
        for task in task_rows(settings, job_id):
            if task["status"] in ("completed", "failed"):
                assert started[task["id"]] == 1, f"task {task['id']} started {started[task['id']]} times"
            else:
                assert task["status"] == "skipped" and started[task["id"]] == 0
    check_history(settings)
    replay(settings)
    assert kills == KILLS, f"the workload ended after {kills} kills: make it longer"


def _back_in_service(session, name: str) -> None:
    vm = vm_service.get_vm(session, name)
    if vm.status == "maintenance" or vm.maintenance_requested:
        vm_service.end_maintenance(session, vm)
