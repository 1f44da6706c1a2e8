"""Editable rows (testlab/db/rows.py): the engine's hot paths write without ORM objects, with the
same conditional writes, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import event as sql_event
from sqlalchemy import select, update
from sqlalchemy.orm.exc import StaleDataError

from testlab.db.models import VM, Event, Host, Job, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import load_row
from testlab.db.session import get_engine, run_transaction, session_scope
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.engine.options import EngineOptions
from testlab.engine.outcomes import Outcomes
from tests.engine.harness import make_lab, submit

VM_ROW = Prepared(select(VM.__table__).where(VM.name == "v1"))


@pytest.fixture
def lab(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    return settings


def vm_row(settings) -> dict:
    with session_scope(settings.database_url, readonly=True) as session:
        return dict(session.execute(VM_ROW.statement).one()._mapping)


def test_a_saved_row_writes_what_changed_and_bumps_its_version(lab):
    before = vm_row(lab)

    def change(session):
        vm = load_row(session, VM_ROW)
        vm.status = VMStatus.DIRTY
        vm.domain = before["domain"]  # the same value: not a change
        vm.save(session)
        vm.save(session)  # nothing left to write

    run_transaction(lab.database_url, change)
    after = vm_row(lab)
    assert after["status"] == VMStatus.DIRTY
    assert after["version"] == before["version"] + 1

    def same_again(session):
        vm = load_row(session, VM_ROW)
        vm.status = VMStatus.DIRTY
        vm.save(session)

    run_transaction(lab.database_url, same_again)
    assert vm_row(lab)["version"] == before["version"] + 1


def test_a_row_changed_since_it_was_read_is_refused_and_the_work_runs_again(lab):
    attempts = []

    def change(session):
        vm = load_row(session, VM_ROW)
        attempts.append(vm.version)
        if len(attempts) == 1:  # someone else's write lands between the read and the save
            session.connection().execute(update(VM).where(VM.name == "v1").values(version=VM.version + 1))
        vm.status = VMStatus.DIRTY
        vm.save(session)

    start = vm_row(lab)["version"]
    run_transaction(lab.database_url, change)
    assert attempts == [start, start]  # the first try was rolled back, its interfering write too
    assert vm_row(lab)["version"] == start + 1

    def stale(session):
        vm = load_row(session, VM_ROW)
        session.connection().execute(update(VM).where(VM.name == "v1").values(version=VM.version + 1))
        vm.errors = 5
        vm.save(session)

    with (
        pytest.raises(StaleDataError, match="vms row .* changed since it was read"),
        session_scope(lab.database_url) as session,
    ):
        stale(session)
    assert vm_row(lab)["errors"] == 0


def test_only_columns_can_be_assigned_and_never_the_version(lab):
    with session_scope(lab.database_url, readonly=True) as session:
        vm = load_row(session, VM_ROW)
        with pytest.raises(AttributeError, match="no column 'colour'"):
            vm.colour = "red"
        with pytest.raises(AttributeError, match="no column 'host'"):
            vm.host  # noqa: B018 - a relationship of the ORM class, not a column
        with pytest.raises(AttributeError, match="version changes only when the row is saved"):
            vm.version = 7


def test_a_task_end_and_a_revert_end_are_written_without_orm_objects(lab, tmp_path):
    """The outcomes of every task: their rows as editable rows (no ORM object loaded), the same
    results: statuses, roll-up, events."""
    job_id = submit(lab, tmp_path / "jobs", "j", "name: j\nsteps:\n  - {name: s, vms: [v1], run: 'true'}\n")
    now = utcnow()
    with session_scope(lab.database_url) as session:
        vm = session.scalars(select(VM).where(VM.name == "v1")).one()
        vm.status, vm.operation, vm.operation_started, vm.uses = VMStatus.RUNNING, "task", now, 1
        task = session.scalars(select(Task).where(Task.job_id == job_id)).one()
        task.status, task.vm_id, task.tries, task.started, task.command_id = (
            TaskStatus.RUNNING,
            vm.id,
            1,
            now,
            "c1",
        )
        vm_id, task_id = vm.id, task.id
    outcomes = Outcomes(lab, EngineOptions())
    event_inserts: list[int] = []  # rows per INSERT INTO events

    def count(_conn, _cursor, statement, parameters, _context, many):
        if statement.startswith("INSERT INTO events"):
            event_inserts.append(len(parameters) if many else 1)

    def finished(session):
        outcomes.task_finished(session, task_id, "exited", 0, "exit code 0")
        return len(session.identity_map)

    sql_event.listen(get_engine(lab.database_url), "before_cursor_execute", count)
    try:
        assert run_transaction(lab.database_url, finished, actor="engine 1") == 0
    finally:
        sql_event.remove(get_engine(lab.database_url), "before_cursor_execute", count)
    assert event_inserts == [4]  # the task's, its VM's, its step's and its job's, in one statement

    def reverted(session):
        outcomes.revert_done(session, vm_id, "boot-2")
        return len(session.identity_map)

    with session_scope(lab.database_url) as session:
        host = session.scalars(select(Host)).one()
        host.errors = 2  # the host failed twice before: a revert that worked starts its count again
    host_version = host.version  # as written above
    assert run_transaction(lab.database_url, reverted, actor="engine 1") == 0
    with session_scope(lab.database_url, readonly=True) as session:
        task = session.get(Task, task_id)
        assert (task.status, task.exit_code, task.ended is not None) == (TaskStatus.COMPLETED, 0, True)
        assert session.get(Job, job_id).status == TaskStatus.COMPLETED
        vm = session.get(VM, vm_id)
        assert (vm.status, vm.operation, vm.boot_id, vm.uses) == (VMStatus.IDLE, None, "boot-2", 1)
        host = session.get(Host, vm.host_id)
        assert (host.errors, host.version) == (0, host_version + 1)  # a versioned write
        events = session.execute(
            select(Event.kind, Event.old_status, Event.new_status, Event.task_id, Event.actor)
            .where(Event.new_status.is_not(None))
            .order_by(Event.id)
        ).all()
    assert [tuple(e) for e in events[-5:]] == [
        ("task", TaskStatus.RUNNING, TaskStatus.COMPLETED, task_id, "engine 1"),
        ("vm", VMStatus.RUNNING, VMStatus.DIRTY, task_id, "engine 1"),
        ("step", TaskStatus.QUEUED, TaskStatus.COMPLETED, None, "engine 1"),
        ("job", TaskStatus.QUEUED, TaskStatus.COMPLETED, None, "engine 1"),
        ("vm", VMStatus.DIRTY, VMStatus.IDLE, None, "engine 1"),
    ]
