"""The fenced lease: an engine that lost its lease changes nothing; a dead holder is no obstacle."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import pytest
from sqlalchemy import select

from testlab.db.models import EngineLease, Event
from testlab.db.session import run_transaction, session_scope
from testlab.engine import lease
from testlab.engine.database import EngineDatabase
from tests.engine.harness import (
    EngineProcess,
    check_history,
    make_lab,
    submit,
    task_rows,
    wait_for,
    wait_for_jobs,
)

pytestmark = pytest.mark.slow

SHORT_LEASE = {"TESTLAB_LEASE_TTL": "2"}
TASK = "name: {name}\nsteps:\n  - {{name: s, vms: [{vm}], run: 'sleep {seconds}; echo done'}}\n"


def lease_epoch(settings) -> int | None:
    with session_scope(settings.database_url, readonly=True) as session:
        lease = session.get(EngineLease, 1)
        return lease.epoch if lease is not None and lease.holder else None


def test_paused_engine_that_lost_its_lease_changes_nothing_and_exits(settings, tmp_path):
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["v1", "v2", "v3"]},
        limits="max_active: 3, max_running: 3, max_reverting: 3, max_reverts_while_running: 3",
    )
    first = EngineProcess(settings, SHORT_LEASE, log=tmp_path / "first.log").start()
    second = EngineProcess(settings, SHORT_LEASE, log=tmp_path / "second.log")
    try:
        job = submit(settings, tmp_path, "long", TASK.format(name="long", vm="v1", seconds=6))
        wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
        first_epoch = lease_epoch(settings)
        first.process.send_signal(signal.SIGSTOP)
        time.sleep(3)  # past the first engine's lease
        second.start()
        wait_for(lambda: lease_epoch(settings) == first_epoch + 1, 30, what="the second engine's lease")
        # Work the first engine would act on the moment it wakes, had it not lost its lease.
        more = [
            submit(settings, tmp_path, f"j{n}", TASK.format(name=f"j{n}", vm=vm, seconds=1))
            for n, vm in enumerate(["v2", "v3", "v1"])
        ]
        first.process.send_signal(signal.SIGCONT)
        first.process.wait(timeout=20)
        assert first.process.returncode == 1
        assert "took the lease over" in (tmp_path / "first.log").read_text()
        assert wait_for_jobs(settings, [job, *more], 90, second) == dict.fromkeys([job, *more], "completed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.process.send_signal(signal.SIGCONT)
        first.stop()
        second.stop()
    with session_scope(settings.database_url, readonly=True) as session:
        ours = session.scalars(select(Event.reason).where(Event.actor == f"engine {first_epoch}")).all()
        by_second = session.scalar(select(Event.id).where(Event.actor == f"engine {first_epoch + 1}"))
        after_takeover = session.scalars(
            select(Event.reason).where(Event.actor == f"engine {first_epoch}", Event.id > by_second)
        ).all()
    assert ours, "the first engine's events carry its epoch"
    assert after_takeover == [], f"the first engine wrote after the takeover: {after_takeover}"
    # The re-attached task ran once, to its end, under the second engine.
    task = task_rows(settings, job)[0]
    assert task["tries"] == 1
    assert (settings.job_dir(job) / "tasks" / str(task["id"]) / "log").read_text().count("done") == 1
    check_history(settings)


def test_restart_right_after_kill_is_not_refused_by_an_unreaped_holder(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    first = EngineProcess(settings, log=tmp_path / "first.log").start()
    wait_for(lambda: lease_epoch(settings) == 1, 30, what="the first engine's lease")
    first.process.send_signal(signal.SIGKILL)  # and do not reap it: it stays a zombie

    def zombie() -> bool:
        with open(f"/proc/{first.process.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"

    wait_for(zombie, 10, what="a zombie holder")
    second = EngineProcess(settings, log=tmp_path / "second.log").start()
    try:
        wait_for(lambda: lease_epoch(settings) == 2, 10, what="the second engine taking the lease over")
        assert second.alive(), (tmp_path / "second.log").read_text()
    finally:
        second.stop()
        first.process.wait(timeout=10)


def test_an_engine_frozen_inside_a_transaction_does_not_keep_its_successor_out(settings, tmp_path):
    """An engine paused (SIGSTOP, a suspended VM) in the middle of one of its writes holds the lease
    row's lock: the next engine's takeover waits for that transaction. The server ends an engine's
    transaction left idle that long, so the takeover waits seconds, not until the frozen engine
    resumes (CI once saw a takeover wait 30 s for an engine stopped mid-write)."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite has no row locks: a frozen writer holds the whole database (busy timeout)")
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    url = settings.database_url
    first = run_transaction(url, lambda s: lease.acquire(s, "vm:1:1", ttl=1.0))
    frozen = EngineDatabase(url)
    frozen.epoch = first
    inside, thaw = threading.Event(), threading.Event()

    def write_and_freeze(session) -> None:
        inside.set()
        thaw.wait(120)

    holder = threading.Thread(target=lambda: frozen_write(frozen, write_and_freeze), daemon=True)
    holder.start()
    try:
        assert inside.wait(10)
        time.sleep(1.5)  # past the frozen engine's lease
        started = time.monotonic()
        second = run_transaction(url, lambda s: lease.acquire(s, "vm:2:2", ttl=10.0))
        waited = time.monotonic() - started
    finally:
        thaw.set()
        holder.join(30)
    assert second == first + 1
    assert waited < lease.ENGINE_IDLE_IN_TRANSACTION_MS / 1000 + 5, f"the takeover waited {waited:.1f} s"


def frozen_write(database: EngineDatabase, work) -> None:
    with contextlib.suppress(Exception):  # the server ended it: what the test is about
        database._fenced(work, (), {})
