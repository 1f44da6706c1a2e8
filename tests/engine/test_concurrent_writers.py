"""Administrators' commands race the engine's writes and lose nothing: every change is either applied
on the rows as they are or refused; the event history and the final rows tell the same story."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
from sqlalchemy import func, select

from testlab.db.models import VM, Event, Job, Task
from testlab.db.session import Conflict, run_transaction, session_scope
from testlab.domain.statuses import TaskStatus, VMStatus
from tests.engine.harness import check_history, make_lab, submit, wait_for, wait_for_jobs

pytestmark = pytest.mark.slow

JOB = "name: {name}\nsteps:\n  - {{name: s, vms: [{vms}], run: 'sleep {seconds}'}}\n"
VMS = ["a1", "a2", "b1", "b2"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testlab", *args], env=env, capture_output=True, text=True, timeout=120
    )


def replay(settings) -> None:
    """Each row's status is the last status its events gave it, and each event starts from the status
    the one before left: a write based on a stale read would break one of the two."""
    with session_scope(settings.database_url, readonly=True) as session:
        for kind, model, key in (("vm", VM, Event.vm_id), ("task", Task, Event.task_id)):
            rows = {row.id: row.status for row in session.scalars(select(model))}
            last: dict[int, str] = {}
            for row_id, old, new, reason in session.execute(
                select(key, Event.old_status, Event.new_status, Event.reason)
                .where(Event.kind == kind, Event.new_status.is_not(None))
                .order_by(Event.id)
            ):
                start = last.get(row_id, VMStatus.OFF if kind == "vm" else TaskStatus.QUEUED)
                assert old == start, f"{kind} {row_id}: event '{reason}' starts from {old}, was {start}"
                last[row_id] = new
            for row_id, status in rows.items():
                assert last.get(row_id, status) == status, (
                    f"{kind} {row_id} is {status}, its events say {last}"
                )


def test_cli_writers_racing_the_engine_lose_no_change(settings, tmp_path, engine_process, subprocess_env):
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["a1", "a2"], "h2": ["b1", "b2"]},
        limits="max_active: 2, max_running: 2, max_reverting: 2, max_reverts_while_running: 2",
    )
    rng = random.Random(11)
    jobs = [
        submit(
            settings,
            tmp_path,
            f"j{n}",
            JOB.format(name=f"j{n}", vms=", ".join(rng.sample(VMS, 2)), seconds=rng.choice([0.2, 0.5, 1])),
        )
        for n in range(12)
    ]
    engine = engine_process()
    wait_for(lambda: any(s != "queued" for s in _statuses(settings, jobs).values()), 30, what="work started")
    stop = threading.Event()
    outcomes: dict[str, list[int]] = defaultdict(list)

    def administrator(vm: str) -> None:
        while not stop.is_set():
            for change in ("--maintenance", "--no-maintenance"):
                outcomes[f"maintenance {vm}"].append(cli(subprocess_env, "vm", "set", vm, change).returncode)
                time.sleep(rng.uniform(0.05, 0.4))

    def hammer(vm: str) -> None:
        """The CLI's own code path in-process, as fast as it goes: many more races per second."""
        from testlab.services import vms as vm_service
        from testlab.services.errors import UserError

        while not stop.is_set():
            for change in (vm_service.request_maintenance, vm_service.end_maintenance):
                try:
                    run_transaction(settings.database_url, lambda s, c=change: c(s, vm_service.get_vm(s, vm)))
                    outcomes[f"hammer {vm}"].append(0)
                except (UserError, Conflict):
                    outcomes[f"hammer {vm}"].append(1)
                time.sleep(rng.uniform(0, 0.02))

    def canceller() -> None:
        for job_id in jobs[1::3]:
            if stop.is_set():
                return
            outcomes["cancel"].append(cli(subprocess_env, "job", "cancel", str(job_id)).returncode)
            time.sleep(0.7)

    def submitter() -> None:
        (tmp_path / "more.yaml").write_text(JOB.format(name="more", vms="a2, b2", seconds=0.2))
        while not stop.is_set():
            result = cli(subprocess_env, "job", "submit", str(tmp_path / "more.yaml"))
            outcomes["submit"].append(result.returncode)
            if result.returncode == 0:
                jobs.append(int(result.stdout))
            time.sleep(0.3)

    writers = [threading.Thread(target=administrator, args=(vm,)) for vm in ("a1", "b1")]
    writers += [threading.Thread(target=hammer, args=(vm,)) for vm in ("a2", "b2")]
    writers += [threading.Thread(target=canceller), threading.Thread(target=submitter)]
    for writer in writers:
        writer.start()
    time.sleep(20)
    stop.set()
    for writer in writers:
        writer.join(timeout=120)
    for vm in VMS:  # out of maintenance for good, whatever the last command left
        cli(subprocess_env, "vm", "set", vm, "--no-maintenance")
    wait_for(
        lambda: VMStatus.MAINTENANCE not in _vm_statuses(settings).values(),
        30,
        what="every VM back in service",
    )
    statuses = wait_for_jobs(settings, jobs, 180, engine)

    assert all(code in (0, 1) for codes in outcomes.values() for code in codes), dict(outcomes)
    assert outcomes["submit"] and set(outcomes["submit"]) == {0}, "every submission succeeds"
    assert 0 in outcomes["maintenance a1"] and 0 in outcomes["maintenance b1"]
    assert all(s in TaskStatus.FINAL for s in statuses.values())
    with session_scope(settings.database_url, readonly=True) as session:
        requested = set(
            session.scalars(select(Event.job_id).where(Event.reason.like("job % cancel requested")))
        )
    for job_id in requested:
        assert statuses[job_id] in ("canceled", "completed"), f"job {job_id} canceled, yet {statuses[job_id]}"
    replay(settings)
    check_history(settings)


def _statuses(settings, jobs: list[int]) -> dict[int, str]:
    with session_scope(settings.database_url, readonly=True) as session:
        return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(jobs))).all())


def _vm_statuses(settings) -> dict[str, str]:
    with session_scope(settings.database_url, readonly=True) as session:
        return dict(session.execute(select(VM.name, VM.status)).all())


def test_a_plan_made_before_another_vm_became_active_does_not_overfill_its_host(settings, tmp_path):
    """The plan reverts `a` into the host's last free slot; before it is recorded, an administrator
    ends the maintenance of `b` on the same host, which makes `b` active (its domain may be running).
    Recording the revert then would take the host past `max_active`: it is dropped, and the next
    round plans with `b` counted."""
    from testlab.engine import reading
    from testlab.engine.dispatch import record_plan
    from testlab.engine.options import EngineOptions
    from testlab.scheduler import Revert, plan
    from testlab.services import vms as vm_service

    make_lab(settings, tmp_path / "vms", {"h1": ["a", "b"]}, limits="max_active: 1")
    with session_scope(settings.database_url) as session:
        vm_service.request_maintenance(session, session.scalar(select(VM).where(VM.name == "b")))
    submit(settings, tmp_path / "jobs", "j", JOB.format(name="j", vms="a", seconds=0))
    options = EngineOptions()
    view = run_transaction(
        settings.database_url,
        lambda s: reading.read_round(s, options, frozenset(), time.time(), {}),
        readonly=True,
    )
    decided = plan(view.snapshot)
    assert [(type(a), a.vm) for a in decided.actions] == [(Revert, "a")]
    with session_scope(settings.database_url) as session:
        vm_service.end_maintenance(session, session.scalar(select(VM).where(VM.name == "b")))
    work = run_transaction(settings.database_url, lambda s: record_plan(s, decided, view, settings, options))
    assert work == []
    with session_scope(settings.database_url, readonly=True) as session:
        assert dict(session.execute(select(VM.name, VM.status)).all()) == {"a": "off", "b": "dirty"}
    check_history(settings)


def test_a_deadlock_victim_runs_again(settings, tmp_path):
    """Two writers lock the same rows in opposite orders; PostgreSQL rolls one back. The victim's unit
    of work runs again on fresh rows instead of failing (a job's cancel from the web answered 503 when
    the engine started one of its tasks at that moment)."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite writers take the write lock at BEGIN: they queue, they never deadlock")
    from sqlalchemy import update

    make_lab(settings, tmp_path / "vms", {"h1": ["a", "b"]})
    first_locked, second_locked = threading.Event(), threading.Event()
    tries = []

    def victim(session) -> str:
        tries.append(1)
        session.execute(update(VM).where(VM.name == "a").values(errors=VM.errors + 1))
        if len(tries) == 1:
            first_locked.set()
            assert second_locked.wait(10)
        session.execute(update(VM).where(VM.name == "b").values(errors=VM.errors + 1))
        return "done"

    def other() -> None:
        assert first_locked.wait(10)
        with session_scope(settings.database_url) as session:
            session.execute(update(VM).where(VM.name == "b").values(errors=VM.errors + 10))
            second_locked.set()
            time.sleep(0.2)  # the victim waits for b first, so its deadlock check fires first
            session.execute(update(VM).where(VM.name == "a").values(errors=VM.errors + 10))

    thread = threading.Thread(target=other)
    thread.start()
    assert run_transaction(settings.database_url, victim) == "done"
    thread.join(timeout=30)
    assert len(tries) == 2
    with session_scope(settings.database_url, readonly=True) as session:
        assert dict(session.execute(select(VM.name, VM.errors)).all()) == {"a": 11, "b": 11}


def test_the_engine_s_row_locks_let_rows_that_refer_to_the_vms_be_written(settings, tmp_path):
    """The engine locks VM rows while it records an outcome or a plan; an event written meanwhile for
    one of those VMs (its foreign key check locks the VM's key) must not wait for it: with FOR UPDATE it
    did, and a job's cancel deadlocked with the engine."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite has no row locks: a writer holds the whole database")
    from sqlalchemy import text

    from testlab.db.models import Host
    from testlab.engine.dispatch import _still_fitting
    from testlab.engine.outcomes import _locked_vm
    from testlab.scheduler import Plan, Revert
    from testlab.services.transitions import record_event

    make_lab(settings, tmp_path / "vms", {"h1": ["a", "b"]})

    def write_an_event_for(name: str) -> None:
        with session_scope(settings.database_url) as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            record_event(session, "vm", "a note", vm=session.scalar(select(VM).where(VM.name == name)))

    with session_scope(settings.database_url) as engine:
        vm = engine.scalar(select(VM).where(VM.name == "a"))
        _locked_vm(engine, vm.id)
        hosts = {h.id: h for h in engine.scalars(select(Host))}
        _still_fitting(engine, Plan(actions=(Revert(vm="a"),)), {"a": vm}, hosts)
        for name in ("a", "b"):
            writer = threading.Thread(target=write_an_event_for, args=(name,))
            writer.start()
            writer.join(timeout=10)
            assert not writer.is_alive()
    with session_scope(settings.database_url, readonly=True) as session:
        assert session.scalar(select(func.count()).where(Event.reason == "a note")) == 2
