"""A planning round is one transaction: it reads the lab, plans and records on that one state
(testlab/engine/planning.py)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import select, text

from testlab.db.models import VM, Blocked
from testlab.db.session import run_transaction, session_scope
from testlab.engine.database import EngineDatabase
from testlab.engine.options import EngineOptions
from testlab.engine.planning import RoundInputs, plan_and_record, run_round
from testlab.engine.reuse import LastViews
from testlab.engine.work import RevertWork
from testlab.services import vms as vm_service
from tests.engine.harness import check_history, make_lab, submit

JOB = "name: {name}\nsteps:\n  - {{name: s, vms: [{vms}], run: 'true'}}\n"


def _inputs(settings, blocked=None) -> RoundInputs:
    return RoundInputs(
        settings=settings,
        options=EngineOptions(),
        inflight=frozenset(),
        now=time.time(),
        demand={},
        last=LastViews(),
        carried=None,
        paused=None,
        blocked=blocked,
    )


def _statuses(settings) -> dict[str, str]:
    with session_scope(settings.database_url, readonly=True) as session:
        return dict(session.execute(select(VM.name, VM.status)).all())


def test_a_round_records_what_it_planned_and_why_work_waits(settings, tmp_path) -> None:
    make_lab(settings, tmp_path / "vms", {"h1": ["a", "b"]})
    with session_scope(settings.database_url) as session:
        vm_service.request_maintenance(session, vm_service.get_vm(session, "b"))
    submit(settings, tmp_path / "jobs", "j", JOB.format(name="j", vms="a, b"))
    done = run_transaction(
        settings.database_url, lambda s: plan_and_record(s, _inputs(settings)), snapshot=True
    )
    assert [(type(w), w.vm.name) for w in done.work] == [(RevertWork, "a")]
    assert _statuses(settings) == {"a": "reverting", "b": "maintenance"}
    assert done.blocked == {"vm b": "vm b is in maintenance"}
    with session_scope(settings.database_url, readonly=True) as session:
        assert dict(session.execute(select(Blocked.subject, Blocked.reason)).all()) == done.blocked
    assert done.view.vm_versions.keys() == {"a", "b"}
    check_history(settings)


def test_a_round_with_the_engine_s_disk_full_starts_nothing_new(settings, tmp_path) -> None:
    make_lab(settings, tmp_path / "vms", {"h1": ["a"]})
    submit(settings, tmp_path / "jobs", "j", JOB.format(name="j", vms="a"))
    inputs = _inputs(settings)
    paused = RoundInputs(**{**inputs.__dict__, "paused": "the engine's disk is full"})
    done = run_transaction(settings.database_url, lambda s: plan_and_record(s, paused), snapshot=True)
    assert done.work == []
    assert done.blocked["engine"] == "the engine's disk is full"
    assert _statuses(settings) == {"a": "off"}


def test_a_round_whose_rows_change_under_it_runs_again_on_the_new_state(settings, tmp_path) -> None:
    """On PostgreSQL the round reads on one snapshot (REPEATABLE READ): an administrator who takes
    the VM offline after the round's read and before its record makes the record's write fail, and
    the round runs again from the read, which sees the VM offline and plans nothing for it. At READ
    COMMITTED the round's reads would not be one state."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite's round holds the write lock from its first read: no change can come between")
    make_lab(settings, tmp_path / "vms", {"h1": ["a"]})
    submit(settings, tmp_path / "jobs", "j", JOB.format(name="j", vms="a"))
    inputs = _inputs(settings)
    tries = []

    def round_with_a_change_between(session):
        tries.append(1)
        session.execute(text("SELECT 1"))  # the transaction's snapshot is taken here
        if len(tries) == 1:
            with session_scope(settings.database_url) as other:
                vm_service.set_offline(other, vm_service.get_vm(other, "a"))
        return plan_and_record(session, inputs)

    done = run_transaction(settings.database_url, round_with_a_change_between, snapshot=True)
    assert len(tries) == 2
    assert done.work == []
    assert _statuses(settings) == {"a": "offline"}
    check_history(settings)


def _round_in_a_thread(db: EngineDatabase, inputs: RoundInputs) -> tuple[threading.Thread, list]:
    done: list = []
    thread = threading.Thread(target=lambda: done.append(run_round(db, inputs)), daemon=True)
    thread.start()
    return thread, done


def test_on_sqlite_a_big_lab_s_round_reads_without_the_write_lock(settings, tmp_path) -> None:
    """A round of a small lab is one transaction, which on SQLite holds the write lock from its first
    read; a round whose last read took long reads in a read-only transaction and takes the lock only
    to record what it planned, so other writers never wait for its read."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's writers do not lock the whole database")
    make_lab(settings, tmp_path / "vms", {"h1": ["a"]})
    db = EngineDatabase(settings.database_url)
    holder = sqlite3.connect(settings.database_url.split("///", 1)[1], isolation_level=None)
    try:
        run_round(db, _inputs(settings))  # the VM is reverted to be ready; then nothing more to do
        settled = run_round(db, _inputs(settings))
        assert settled.work == []
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        slow = RoundInputs(**{**_inputs(settings, blocked=settled.blocked).__dict__, "last_read": 1.0})
        thread, done = _round_in_a_thread(db, slow)
        thread.join(10)
        assert done and done[0].work == []  # read and planned with the lock held elsewhere
        small = RoundInputs(**{**_inputs(settings, blocked=settled.blocked).__dict__, "last_read": 0.001})
        thread, done = _round_in_a_thread(db, small)
        thread.join(0.5)
        assert not done  # one transaction: it waits for the lock from its start
        holder.execute("COMMIT")
        thread.join(10)
        assert done and done[0].work == []
    finally:
        holder.close()
        db.close()


def test_a_big_lab_s_round_records_its_plan_in_a_transaction_of_its_own(settings, tmp_path) -> None:
    make_lab(settings, tmp_path / "vms", {"h1": ["a"]})
    submit(settings, tmp_path / "jobs", "j", JOB.format(name="j", vms="a"))
    db = EngineDatabase(settings.database_url)
    try:
        done = run_round(db, RoundInputs(**{**_inputs(settings).__dict__, "last_read": 1.0}))
    finally:
        db.close()
    assert [(type(w), w.vm.name) for w in done.work] == [(RevertWork, "a")]
    assert _statuses(settings) == {"a": "reverting"}
    check_history(settings)
