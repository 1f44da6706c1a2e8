"""Statements run straight on the driver (testlab/db/prepared.py): the same rows, types and writes
as through SQLAlchemy, its errors, its listeners, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, column, select, table
from sqlalchemy import event as sql_event
from sqlalchemy import exc as sql_errors

from testlab.db.models import VM, Event, utcnow
from testlab.db.prepared import Prepared, connection_of
from testlab.db.session import get_engine, run_transaction, session_scope
from testlab.engine import dispatch, lease, outcomes, reading
from testlab.services import notifications, tasks, transitions, uses
from tests.engine.harness import make_lab, submit

# What the engine runs at every task, each with the parameters it runs with.
HOT_READS = [
    (reading._HOSTS, {}),
    (reading._VMS, {}),
    (reading._RUNNING, {}),
    (reading._QUEUE_HEADS, {"deepest_pool": 2}),
    (lease._EPOCH, {}),
    (outcomes._LOCKED_VM_ROW, {"vm": 1}),
    (tasks._TASK_STEP_JOB_ROWS, {"task": 1}),
    (transitions._TASK_STATUSES, {"of_job": 1}),
    (transitions._STEP_ROWS_OF_JOB, {"of_job": 1}),
    (uses._CURRENT_USES, {"of_vm": 1}),
    (notifications._JOB_LISTENERS, {"owner": "tester"}),
    (dispatch._VM_NAMED, {"name": "v1"}),
    (dispatch._HOST, {"id": 1}),
    (dispatch._VMS_OF_HOST, {"host": 1}),
]
# ... and writes, each with the keys it runs with (an event: every column but its id, as record_event).
EVENT_COLUMNS = (
    "time",
    "kind",
    "vm_id",
    "host_id",
    "task_id",
    "job_id",
    "old_status",
    "new_status",
    "reason",
    "actor",
)
HOT_WRITES = [
    (transitions._INSERT_EVENT, dict.fromkeys(EVENT_COLUMNS)),
    (uses._BEGIN_TASK_USE, dict.fromkeys(("of_vm", "use_kind", "of_job", "of_step", "of_task", "at"))),
    (uses._END_TASK_USE, {}),
    (uses._WIPE, {}),
    (outcomes._HOST_WORKS, {}),
]


@pytest.fixture
def lab(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]})
    submit(settings, tmp_path / "jobs", "j", "name: j\nsteps:\n  - {name: s, vms: [v1, v2], run: 'true'}\n")
    return settings


def test_reads_give_what_sqlalchemy_gives(lab):
    def both(session):
        found = []
        for prepared, params in HOT_READS:
            assert prepared.on_driver(connection_of(session).dialect, params), prepared.statement
            ours = [tuple(row) for row in prepared.execute(session, params)]
            theirs = [tuple(row) for row in session.execute(prepared.statement, params)]
            assert ours == theirs
            assert [[type(v) for v in row] for row in ours] == [[type(v) for v in row] for row in theirs]
            found.append(len(ours))
        return found

    counts = run_transaction(lab.database_url, both)  # a writer's: the lease is read FOR SHARE
    assert counts[:4] == [1, 2, 0, 2]  # a host, its VMs, nothing running, a queued task per VM
    assert counts[6:9] == [1, 2, 1]


def test_every_hot_write_runs_on_the_driver(lab):
    """A write that fell back to SQLAlchemy (a list in IN, a column default filled in Python) would
    still work, only slower: this says which."""

    def check(session):
        dialect = connection_of(session).dialect
        return [str(p.statement).split("(")[0] for p, keys in HOT_WRITES if not p.on_driver(dialect, keys)]

    assert run_transaction(lab.database_url, check, readonly=True) == []


def test_rows_have_their_columns_as_attributes(lab):
    def read(session):
        return reading._VMS.execute(session).all()

    vms = run_transaction(lab.database_url, read, readonly=True)
    assert [vm.name for vm in vms] == ["v1", "v2"]
    assert vms[0]._asdict()["name"] == "v1" and vms[0]._mapping["id"] == vms[0].id
    assert isinstance(vms[0].labels, list) and isinstance(vms[0].maintenance_requested, bool)


def test_writes_convert_mark_the_transaction_and_count_rows(lab):
    now = utcnow()
    event = {
        "time": now,
        "kind": "vm",
        "vm_id": 1,
        "host_id": None,
        "task_id": None,
        "job_id": None,
        "old_status": None,
        "new_status": None,
        "reason": "a test",
        "actor": "tester",
    }

    def write(session):
        assert not connection_of(session).info.get("wrote")
        transitions._INSERT_EVENT.execute_many(session, [event, {**event, "reason": "another"}])
        assert connection_of(session).info["wrote"]  # so that its commit wakes the engine
        return outcomes._HOST_WORKS.execute(session, {"host": 1}).rowcount

    assert run_transaction(lab.database_url, write) == 0  # the host had no errors to forget
    with session_scope(lab.database_url, readonly=True) as session:
        stored = session.execute(
            select(Event.time, Event.reason).where(Event.reason.in_(["a test", "another"]))
        )
        assert sorted(stored) == [(now, "a test"), (now, "another")]  # a datetime, read back as written


def test_a_driver_error_is_raised_as_sqlalchemys(lab):
    broken = Prepared(select(table("no_such_table", column("x")).c.x))

    def run(session):
        broken.execute(session)

    with pytest.raises(sql_errors.DBAPIError) as raised:
        run_transaction(lab.database_url, run, readonly=True)
    assert "no_such_table" in str(raised.value.orig)
    assert not raised.value.connection_invalidated


def test_listeners_see_each_statement_and_an_expanding_list_falls_back(lab):
    expanding = Prepared(select(VM.__table__).where(VM.name.in_(bindparam("names", expanding=True))))
    seen = []

    def listen(_conn, _cursor, statement, _parameters, _context, _many):
        seen.append(statement.split()[0])

    def run(session):
        assert not expanding.on_driver(connection_of(session).dialect)  # IN :names
        names = [row.name for row in expanding.execute(session, {"names": ["v2", "v1"]})]
        return names, lease._EPOCH.execute(session).scalar()

    sql_event.listen(get_engine(lab.database_url), "before_cursor_execute", listen)
    try:
        names, epoch = run_transaction(lab.database_url, run)
    finally:
        sql_event.remove(get_engine(lab.database_url), "before_cursor_execute", listen)
    assert sorted(names) == ["v1", "v2"] and epoch is None  # no engine holds the lease
    assert seen.count("SELECT") == 2


def test_the_connection_is_the_transactions_own(lab):
    """Remembered for one transaction: the next has its own (a stale one would write outside it)."""
    with session_scope(lab.database_url) as session:
        first = connection_of(session)
        assert connection_of(session) is first is session.connection()
    with session_scope(lab.database_url) as session:
        assert connection_of(session) is session.connection()
        assert session.scalar(select(VM.name).where(VM.id == 1)) == "v1"
