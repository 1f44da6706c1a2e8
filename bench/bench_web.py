"""The web server over a big history: 1,000,000 tasks in PostgreSQL.

Fills a fresh PostgreSQL database (generate_series, in the server) with 100,000 jobs of 10 tasks,
their events and 200 VMs on 10 hosts, starts `testlab serve` on a real port, and times what people
open all day: the job list (first page, a deep page, filtered), a job (JSON and page), a VM's history
(JSON and page). Prints the median and the worst of 20 requests each, with the row counts.
Target: every one under 100 ms.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' throw-away PostgreSQL server

from testlab.db.session import session_scope, upgrade
from testlab.services.users import add_user
from tests.support.postgres import PostgresServer, free_port

HOSTS, VMS_PER_HOST = 10, 20
JOBS, TASKS_PER_JOB = 100_000, 10
ROUNDS = 20
TARGET_MS = 100.0

FILL = [
    "INSERT INTO hosts (id, name, backend, uri, status, status_reason, errors, options, description,"
    " max_active, max_running, max_reverting, max_reverts_while_running, max_ready_when_idle,"
    " sleep_after_revert, commands, retired, version)"
    " SELECT h, 'host' || h, 'command', 'bench', 'up', '', 0, '{{}}', '', 4, 2, 1, 0, 2, 0, '{{}}', false, 1"
    " FROM generate_series(1, {hosts}) h",
    "INSERT INTO vms (id, name, host_id, domain, snapshot, role, labels, description, status,"
    " maintenance_requested, abort_requested, errors, version)"
    " SELECT v, 'vm' || v, 1 + (v - 1) / {per_host}, 'vm' || v, 'clean', 'base', '[]', '', 'idle',"
    " false, false, 0, 1 FROM generate_series(1, {vms}) v",
    "INSERT INTO jobs (id, owner, name, description, priority, status, cancel_requested, submitted, started,"
    " ended, version)"
    " SELECT j, 'user' || (j % 50), 'job kind ' || (j % 200), '', 50, 'completed', false,"
    " timestamp '2026-01-01' + j * interval '30 seconds',"
    " timestamp '2026-01-01' + j * interval '30 seconds' + interval '5 seconds',"
    " timestamp '2026-01-01' + j * interval '30 seconds' + interval '65 seconds', 1"
    " FROM generate_series(1, {jobs}) j",
    "INSERT INTO steps (id, job_id, number, name, command, files, artifacts, env, timeout, status, started,"
    " ended, version)"
    " SELECT j, j, 1, 'test', 'make check', '[]', '[]', '{{}}', 600, 'completed', j2.started, j2.ended, 1"
    " FROM generate_series(1, {jobs}) j JOIN jobs j2 ON j2.id = j",
    "INSERT INTO tasks (id, job_id, step_id, number, vm_id, status, timeout, tries, started, ended,"
    " exit_code, detail, version)"
    " SELECT t, 1 + (t - 1) / {per_job}, 1 + (t - 1) / {per_job}, 1 + (t - 1) % {per_job}, 1 + t % {vms},"
    " CASE WHEN t % 97 = 0 THEN 'failed' ELSE 'completed' END, 600, 1,"
    " timestamp '2026-01-01' + ((t - 1) / {per_job}) * interval '30 seconds' + interval '5 seconds',"
    " timestamp '2026-01-01' + ((t - 1) / {per_job}) * interval '30 seconds' + interval '65 seconds',"
    " CASE WHEN t % 97 = 0 THEN 1 ELSE 0 END, 'exit code 0', 1"
    " FROM generate_series(1, {tasks}) t",
    # Two events per task: the VM starting it, and the task ending.
    "INSERT INTO events (time, kind, vm_id, host_id, job_id, task_id, old_status, new_status, reason, actor)"
    " SELECT t.started, 'vm', t.vm_id, v.host_id, t.job_id, t.id, 'idle', 'running',"
    " 'running task ' || t.id, 'engine 1' FROM tasks t JOIN vms v ON v.id = t.vm_id ORDER BY t.id",
    "INSERT INTO events (time, kind, vm_id, host_id, job_id, task_id, old_status, new_status, reason, actor)"
    " SELECT t.ended, 'task', t.vm_id, v.host_id, t.job_id, t.id, 'running', t.status, t.detail, 'engine 1'"
    " FROM tasks t JOIN vms v ON v.id = t.vm_id ORDER BY t.id",
    "SELECT setval(pg_get_serial_sequence('jobs', 'id'), {jobs})",
    "SELECT setval(pg_get_serial_sequence('steps', 'id'), {jobs})",
    "SELECT setval(pg_get_serial_sequence('tasks', 'id'), {tasks})",
    "SELECT setval(pg_get_serial_sequence('hosts', 'id'), {hosts})",
    "SELECT setval(pg_get_serial_sequence('vms', 'id'), {vms})",
    "ANALYZE",
]


def fill(url: str) -> dict[str, int]:
    values = {
        "hosts": HOSTS,
        "per_host": VMS_PER_HOST,
        "vms": HOSTS * VMS_PER_HOST,
        "jobs": JOBS,
        "per_job": TASKS_PER_JOB,
        "tasks": JOBS * TASKS_PER_JOB,
    }
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SET maintenance_work_mem = '256MB'")
        for statement in FILL:
            connection.execute(statement.format(**values))
        counts = {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("hosts", "vms", "jobs", "steps", "tasks", "events")
        }
    return counts


def timed(http: httpx.Client, path: str) -> tuple[float, float]:
    http.get(path).raise_for_status()  # warm
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        response = http.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return statistics.median(times), max(times)


def main() -> int:
    postgres = PostgresServer().start()
    home = Path(tempfile.mkdtemp(prefix="bench-web-"))
    server = None
    try:
        url = postgres.create_database("bench_web")
        upgrade(url)
        started = time.perf_counter()
        counts = fill(url)
        print(
            f"filled in {time.perf_counter() - started:.0f} s: "
            + ", ".join(f"{v:,} {k}" for k, v in counts.items())
        )
        with session_scope(url) as session:
            token = add_user(session, "bench", admin=True)
        port = free_port()
        env = {**os.environ, "TESTLAB_HOME": str(home), "TESTLAB_DB": url}
        server = subprocess.Popen(
            [sys.executable, "-m", "testlab", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        middle = JOBS // 2
        checks = [
            ("job list, first page (50)", "/api/v1/jobs"),
            ("job list, a page deep in the history", f"/api/v1/jobs?before={middle}"),
            ("job list, by owner", "/api/v1/jobs?owner=user7"),
            ("job list, by status", "/api/v1/jobs?status=completed&before=1000"),
            ("job list page (HTML, with task chips)", "/jobs"),
            ("a job (JSON, 10 tasks)", f"/api/v1/jobs/{middle}"),
            (
                "a job page (HTML, a failure and its VM's history)",
                f"/jobs/{1 + (97 * 500 - 1) // TASKS_PER_JOB}",
            ),
            ("a VM's history (JSON, 50 events)", "/api/v1/vms/vm17/events"),
            ("a VM's history, a deep page", "/api/v1/vms/vm17/events?before=1000000"),
            ("a VM page (HTML, its history)", "/vms/vm17"),
        ]
        failed = False
        print(f"{'what':55} {'median':>9} {'worst':>9}")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            for label, path in checks:
                median, worst = timed(http, path)
                failed |= median > TARGET_MS
                print(f"{label:55} {median:7.1f}ms {worst:7.1f}ms")
        print(f"target: median under {TARGET_MS:.0f} ms each: {'missed' if failed else 'met'}")
        return 1 if failed else 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
