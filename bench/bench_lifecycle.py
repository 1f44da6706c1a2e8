"""Reading one VM's lifecycle among 1,000,000 use rows of other VMs, on SQLite and PostgreSQL.

Run: python bench/bench_lifecycle.py [--rows N] [--sqlite-only]

Fills a fresh database with N (default 1,000,000) rows of `vm_uses` spread over 1,000 other VMs, in
lifecycles of 20 uses each (all closed by a wipe but each VM's last, which is open), plus the VM
measured: 40 closed uses and 12 in its current lifecycle. Then times, inside one read transaction
as the engine does at a task's start and end, what the lifecycle features read:

- the VM's current lifecycle (`current_uses`: what each task's history string is made from);
- that plus making the history string (`format_history`);
- the earlier uses of a failed task (`uses_before`: what `job show` lists next to a failure);
- the VM's lifecycles for `testlab blame --vm`.

Prints the median and the worst of 200 reads each. Target: the current lifecycle under 1 ms.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' throw-away PostgreSQL server

from testlab.db.session import session_scope, upgrade
from testlab.lifecycle import format_history
from testlab.services.uses import current_uses, lifecycles, uses_before
from tests.support.postgres import PostgresServer

OTHER_VMS = 1_000
PER_LIFECYCLE = 20
TARGET_VM = OTHER_VMS + 1
TARGET_CLOSED, TARGET_OPEN = 40, 12
READS = 200
TARGET_MS = 1.0
EPOCH = datetime(2026, 1, 1)

PG_FILL = [
    "INSERT INTO hosts (id, name, backend, uri, status, status_reason, errors, options, description,"
    " max_active, max_running, max_reverting, max_reverts_while_running, max_ready_when_idle,"
    " sleep_after_revert, commands, retired, version)"
    " VALUES (1, 'host1', 'command', 'bench', 'up', '', 0, '{{}}', '', 4, 2, 1, 1, 2, 0, '{{}}', false, 1)",
    "INSERT INTO vms (id, name, host_id, domain, snapshot, role, labels, description, status,"
    " maintenance_requested, abort_requested, errors, version, wipe, uses)"
    " SELECT v, 'vm' || v, 1, 'vm' || v, 'clean', 'base', '[]', '', 'idle', false, false, 0, 1, 'reuse', 0"
    " FROM generate_series(1, {vms}) v",
    # Row r belongs to VM 1 + r % OTHER_VMS, is its (r / OTHER_VMS)-th use; every PER_LIFECYCLE uses a
    # wipe closes the lifecycle, but the VM's last one stays open.
    "INSERT INTO vm_uses (vm_id, kind, job_id, step, task_id, detail, started, ended, outcome, wiped)"
    " SELECT 1 + r % {others}, 'task', r, 'step' || (r % 7), r, '',"
    " timestamp '2026-01-01' + r * interval '1 second',"
    " timestamp '2026-01-01' + r * interval '1 second' + interval '1 second',"
    " CASE WHEN r % 13 = 0 THEN 'failed' ELSE 'completed' END,"
    " CASE WHEN (r / {others}) / {per} < ({rows} / {others} - 1) / {per}"
    "   THEN timestamp '2026-01-01' + (((r / {others}) / {per} + 1) * {per} * {others}) * interval '1 second'"
    " END"
    " FROM generate_series(0, {rows} - 1) r",
]


def _target_rows(start_id: int) -> list[tuple]:
    """The measured VM's uses: two closed lifecycles of 20, then 12 in its current one."""
    rows = []
    for n in range(TARGET_CLOSED + TARGET_OPEN):
        started = EPOCH + timedelta(days=30, seconds=n)
        wiped = EPOCH + timedelta(days=30, seconds=(n // 20 + 1) * 20) if n < TARGET_CLOSED else None
        ended = None if n == TARGET_CLOSED + TARGET_OPEN - 1 else started + timedelta(seconds=1)
        outcome = None if ended is None else ("failed" if n % 5 == 4 else "completed")
        rows.append(
            (
                TARGET_VM,
                "task",
                start_id + n,
                f"step{n % 7}",
                start_id + n,
                "",
                started,
                ended,
                outcome,
                wiped,
            )
        )
    return rows


def fill_sqlite(path: Path, total: int) -> None:
    connection = sqlite3.connect(path)
    connection.execute(
        "INSERT INTO hosts (id, name, backend, uri, status, status_reason, errors, options, description,"
        " max_active, max_running, max_reverting, max_reverts_while_running, max_ready_when_idle,"
        " sleep_after_revert, commands, retired, version)"
        " VALUES (1, 'host1', 'command', 'bench', 'up', '', 0, '{}', '', 4, 2, 1, 1, 2, 0, '{}', 0, 1)"
    )
    connection.executemany(
        "INSERT INTO vms (id, name, host_id, domain, snapshot, role, labels, description, status,"
        " maintenance_requested, abort_requested, errors, version, wipe, uses)"
        " VALUES (?, ?, 1, ?, 'clean', 'base', '[]', '', 'idle', 0, 0, 0, 1, 'reuse', 0)",
        ((v, f"vm{v}", f"vm{v}") for v in range(1, TARGET_VM + 1)),
    )
    last_lifecycle = (total // OTHER_VMS - 1) // PER_LIFECYCLE

    def rows():
        for r in range(total):
            lifecycle = (r // OTHER_VMS) // PER_LIFECYCLE
            wiped = (
                EPOCH + timedelta(seconds=(lifecycle + 1) * PER_LIFECYCLE * OTHER_VMS)
                if lifecycle < last_lifecycle
                else None
            )
            started = EPOCH + timedelta(seconds=r)
            yield (
                1 + r % OTHER_VMS,
                "task",
                r,
                f"step{r % 7}",
                r,
                "",
                started,
                started + timedelta(seconds=1),
                "failed" if r % 13 == 0 else "completed",
                wiped,
            )

    insert = (
        "INSERT INTO vm_uses (vm_id, kind, job_id, step, task_id, detail, started, ended, outcome, wiped)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    connection.executemany(
        insert, ((*row[:6], *(_iso(v) for v in row[6:8]), row[8], _iso(row[9])) for row in rows())
    )
    connection.executemany(
        insert,
        ((*row[:6], *(_iso(v) for v in row[6:8]), row[8], _iso(row[9])) for row in _target_rows(total)),
    )
    connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ")


def fill_postgres(url: str, total: int) -> None:
    values = {"vms": TARGET_VM, "others": OTHER_VMS, "per": PER_LIFECYCLE, "rows": total}
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SET maintenance_work_mem = '256MB'")
        for statement in PG_FILL:
            connection.execute(statement.format(**values))
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO vm_uses (vm_id, kind, job_id, step, task_id, detail, started, ended, outcome,"
                " wiped) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                _target_rows(total),
            )
        connection.execute("ANALYZE")


def _time(work, reads: int = READS) -> tuple[float, float]:
    work()  # warm
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def measure(url: str, total: int) -> bool:
    now = EPOCH + timedelta(days=31)
    last_task = total + TARGET_CLOSED + TARGET_OPEN - 2  # the last ended use of the measured VM
    with session_scope(url, readonly=True) as session:
        count = session.connection().exec_driver_sql("SELECT count(*) FROM vm_uses").scalar()
        uses = current_uses(session, TARGET_VM, now=now)
        assert len(uses) == TARGET_OPEN, len(uses)
        checks = [
            ("current lifecycle (12 uses)", lambda: current_uses(session, TARGET_VM, now=now)),
            (
                "current lifecycle + history string",
                lambda: format_history(current_uses(session, TARGET_VM, now=now), current_job=total + 60),
            ),
            ("earlier uses of a failed task (job show)", lambda: uses_before(session, last_task)),
            ("the VM's lifecycles (blame --vm, 52 uses)", lambda: lifecycles(session, vm_ids=[TARGET_VM])),
        ]
        print(f"  {count:,} rows of vm_uses")
        print(f"  {'what':45} {'median':>9} {'worst':>9}")
        met = True
        for index, (label, work) in enumerate(checks):
            median, worst = _time(work)
            if index == 0:
                met = median < TARGET_MS
            print(f"  {label:45} {median:7.3f}ms {worst:7.3f}ms")
        print(f"  target: current lifecycle under {TARGET_MS:g} ms: {'met' if met else 'missed'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="use rows of other VMs")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()
    total = max(OTHER_VMS * PER_LIFECYCLE, args.rows - args.rows % OTHER_VMS)
    met = True
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as home:
        path = Path(home) / "testlab.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        started = time.perf_counter()
        fill_sqlite(path, total)
        print(f"SQLite (filled in {time.perf_counter() - started:.0f} s)")
        met &= measure(url, total)
    if not args.sqlite_only:
        postgres = PostgresServer().start()
        try:
            url = postgres.create_database("bench_lifecycle")
            upgrade(url)
            started = time.perf_counter()
            fill_postgres(url, total)
            print(f"PostgreSQL (filled in {time.perf_counter() - started:.0f} s)")
            met &= measure(url, total)
        finally:
            postgres.stop()
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
