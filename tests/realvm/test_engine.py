"""The engine on real QEMU guests: a build step, then a test step on two VMs of the same domain with
different snapshots; uploads, detached commands, artifacts, reverts that wipe what a task left behind,
and an engine killed with SIGKILL while a command runs in a guest, re-attached after its restart."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from testlab.db.models import Event
from testlab.db.session import session_scope
from testlab.hypervisor import open_backend
from tests.engine.harness import (
    EngineProcess,
    check_history,
    describe_lab,
    submit,
    task_rows,
    wait_for,
    wait_for_jobs,
)
from tests.realvm.conftest import RealLab
from tests.realvm.host import URI

pytestmark = [pytest.mark.realvm, pytest.mark.slow]

JOB = """\
name: build and test on real guests
steps:
  - name: build
    vms: [build]
    files: [check-clean.sh, build.sh]
    run: sh check-clean.sh && sh build.sh
    artifacts: [out/*]
    timeout: 2m
  - name: test
    after: build
    vms: [t1, t2]
    files: [check-clean.sh, test.sh]
    run: sh check-clean.sh && sh test.sh
    timeout: 3m
"""
# Every task leaves a mark outside its work dir; the next task on the domain fails if it finds one.
CHECK_CLEAN = """\
if [ -e /var/tmp/left-by-a-task ]; then
    echo "not reverted: found the mark of $(cat /var/tmp/left-by-a-task)"
    exit 3
fi
echo "$TESTLAB_VM task $TESTLAB_TASK" > /var/tmp/left-by-a-task
"""
BUILD = """\
mkdir -p out
echo "built on $TESTLAB_VM with $(uname -r)" > out/product
echo building
"""
TEST = """\
grep -q "built on build" out/product
echo "started on $TESTLAB_VM"
if [ "$TESTLAB_VM" = t1 ]; then
    i=0
    while [ $i -lt 20 ]; do echo "t1 tick $i"; i=$((i + 1)); sleep 1; done
fi
echo "finished on $TESTLAB_VM"
"""


def test_a_job_runs_on_real_guests_and_survives_an_engine_kill(real_lab: RealLab, tmp_path: Path) -> None:
    settings = real_lab.fresh_database(tmp_path / "home")
    job = submit(
        settings,
        tmp_path,
        "job",
        JOB,
        {"check-clean.sh": CHECK_CLEAN, "build.sh": BUILD, "test.sh": TEST},
    )
    log = settings.home / "engine.log"
    engines = [EngineProcess(settings, log=log).start()]
    try:
        t1 = next(row for row in _tasks(settings, job) if row["vm"] == "t1")
        t1_log = settings.job_dir(job) / "tasks" / str(t1["id"]) / "log"

        def t1_ticking() -> bool:
            assert engines[-1].alive(), log.read_text()[-3000:]
            return t1_log.is_file() and "t1 tick 2" in t1_log.read_text()

        try:
            wait_for(t1_ticking, 240, interval=0.2, what="t1's command running in its guest")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{describe_lab(settings, [job], engines[-1])}") from None
        engines[-1].kill()  # SIGKILL while the command runs in the guest
        killed_at = t1_log.read_text()
        time.sleep(2)
        engines.append(EngineProcess(settings, log=log).start())
        statuses = wait_for_jobs(settings, [job], 240, engines[-1])
    finally:
        for engine in engines:
            engine.stop()
        _power_off(real_lab.domain)  # an engine keeps VMs ready; the guests outlive it by design

    rows = _tasks(settings, job)
    assert statuses == {job: "completed"}, rows
    assert [(r["vm"], r["status"], r["tries"]) for r in rows] == [
        ("build", "completed", 1),
        ("t1", "completed", 1),
        ("t2", "completed", 1),
    ], rows
    # Re-attached, not restarted: one start, the ticks before the kill, then the rest, once each.
    text = t1_log.read_text()
    assert text.startswith(killed_at) and text.count("started on t1") == 1
    assert [int(n) for n in re.findall(r"t1 tick (\d+)", text)] == list(range(20))
    assert "finished on t1" in text
    product = settings.job_dir(job) / "tasks" / str(rows[0]["id"]) / "artifacts" / "out" / "product"
    assert product.read_text().startswith("built on build with 6.")
    # Three tasks on one domain, each after its own revert, each with a new agent.
    boots = _revert_boots(settings)
    assert len(boots) >= 3 and len(set(boots)) == len(boots), boots
    check_history(settings)


def _power_off(domain: str) -> None:
    backend = open_backend("libvirt", "cleanup", URI, {"shutdown_grace": 0})
    try:
        backend.power_off(domain)
    finally:
        backend.close()


def _tasks(settings, job: int) -> list[dict]:
    return sorted(task_rows(settings, job), key=lambda row: row["vm"])


def _revert_boots(settings) -> list[str]:
    with session_scope(settings.database_url) as session:
        reasons = session.scalars(select(Event.reason).where(Event.reason.like("reverted to %"))).all()
    return [m.group(1) for reason in reasons if (m := re.search(r"agent boot (\w+)", reason))]
