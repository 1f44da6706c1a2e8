"""Results people can act on: reports parsed, new failures told apart from known ones, logs followed,
notifications delivered once, old jobs collected. Real engine, real agents, both databases."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select, update

from testlab.db.models import Delivery, Job, TestCaseResult, utcnow
from testlab.db.session import run_transaction, session_scope
from testlab.services.notifications import add_webhook
from testlab.services.users import add_user, set_notifications
from tests.engine.harness import EngineProcess, make_lab, submit, task_rows, wait_for, wait_for_jobs
from tests.support.postgres import free_port

pytestmark = pytest.mark.slow

# Writes a JUnit and a TAP report whose outcomes the job's environment chooses: CASES="c1=fail c2=pass".
REPORTER = r"""
mkdir -p results
{
  echo '<?xml version="1.0"?>'
  echo '<testsuites><testsuite name="unit">'
  for case in $CASES; do
    name=${case%%=*}; outcome=${case#*=}
    case $outcome in
      pass) echo "<testcase classname='unit' name='$name' time='0.5'/>";;
      fail) echo "<testcase classname='unit' name='$name'><failure message='$name broke'/></testcase>";;
      error) echo "<testcase classname='unit' name='$name'><error message='$name crashed'/></testcase>";;
      skip) echo "<testcase classname='unit' name='$name'><skipped/></testcase>";;
    esac
  done
  echo '</testsuite></testsuites>'
} > results/unit.xml
if [ -n "$TAP" ]; then printf '%b' "$TAP" > results/more.tap; fi
if [ -n "$CUT" ]; then head -c "$CUT" results/unit.xml > results/cut && mv results/cut results/unit.xml; fi
echo reported
"""
JOB = """\
name: {name}
{extra}steps:
  - name: test
    vms: [v1]
    files: [report.sh]
    run: sh report.sh
    reports: [results/*.xml, {tap}]
    env: {{CASES: "{cases}", TAP: "{tap_text}", CUT: "{cut}"}}
"""


def job_file(name: str, cases: str, *, tap: str = "", cut: str = "", extra: str = "") -> str:
    pattern = "results/*.tap" if tap else "results/none-*.tap"
    return JOB.format(name=name, extra=extra, cases=cases, tap=pattern, tap_text=tap, cut=cut)


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {"TESTLAB_HOME": str(settings.home), "TESTLAB_DB": settings.database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "testlab", *args], env=env, capture_output=True, text=True, timeout=120
    )


def results(settings, job: int) -> list[dict]:
    done = cli(settings, "job", "results", str(job), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def lab(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    return tmp_path


def run_jobs(settings, tmp_path, engine_process, *texts: str) -> list[int]:
    ids = [
        submit(settings, tmp_path, f"j{n}-{time.monotonic_ns()}", t, {"report.sh": REPORTER})
        for n, t in enumerate(texts)
    ]
    wait_for_jobs(settings, ids, 120, engine_process())
    return ids


def test_junit_and_tap_reports_are_parsed_into_cases_and_fail_the_task(settings, lab, engine_process):
    tap = "TAP version 13\\n1..3\\nok 1 - t1\\nnot ok 2 - t2\\n# t2 went wrong\\nok 3 - t3 # SKIP no disk\\n"
    (job,) = run_jobs(settings, lab, engine_process, job_file("j", "a=pass b=fail c=error d=skip", tap=tap))
    task = task_rows(settings, job)[0]
    assert task["status"] == "failed" and task["exit_code"] == 0, task
    cases = {(c["suite"], c["name"]): c for c in results(settings, job)}
    assert {k: c["status"] for k, c in cases.items()} == {
        ("unit", "a"): "passed",
        ("unit", "b"): "failed",
        ("unit", "c"): "error",
        ("unit", "d"): "skipped",
        ("results/more.tap", "t1"): "passed",
        ("results/more.tap", "t2"): "failed",
        ("results/more.tap", "t3"): "skipped",
    }
    assert "b broke" in cases[("unit", "b")]["message"]
    assert "t2 went wrong" in cases[("results/more.tap", "t2")]["message"]
    with session_scope(settings.database_url, readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(TestCaseResult)) == 7
    assert task_rows(settings, job)[0]["detail"].endswith("3 of 7 test cases failing")
    show = cli(settings, "job", "show", str(job))
    assert "3 test failures" in show.stdout, show.stdout


def test_a_truncated_report_is_flagged_with_its_name(settings, lab, engine_process):
    (job,) = run_jobs(settings, lab, engine_process, job_file("j", "a=pass b=pass", cut="80"))
    task = task_rows(settings, job)[0]
    assert task["status"] == "failed"
    assert "results/unit.xml: truncated" in task["detail"], task["detail"]


def test_failures_are_new_known_or_flaky_against_the_reference_runs(settings, lab, engine_process):
    reference = "reference: true\n"
    ids = run_jobs(
        settings,
        lab,
        engine_process,
        job_file("r1", "c1=pass c2=pass c4=pass", extra=reference),
        job_file("r2", "c1=pass c2=pass c4=fail", extra=reference),
        job_file("r3", "c1=fail c2=pass c4=pass", extra=reference),
        job_file("now", "c1=fail c2=fail c3=fail c4=fail"),
    )
    found = results(settings, ids[-1])
    by_name = {c["name"]: c for c in found}
    assert by_name["c1"]["new"] is False, "failing in the last reference run too: known"
    assert by_name["c2"]["new"] is True, "passing in the last reference run: new"
    assert by_name["c3"]["new"] is True, "never in a reference run: new"
    assert by_name["c4"]["new"] is True and by_name["c4"]["flaky"] is True
    assert by_name["c1"]["flaky"] is False
    assert [c["name"] for c in found][:3] == ["c2", "c3", "c4"], "new failures first"
    view = json.loads(cli(settings, "job", "show", str(ids[-1]), "--json").stdout)
    assert view["results"]["new"] == 3 and view["results"]["known"] == 1
    # Only known failures left: the verdict says so.
    (later,) = run_jobs(settings, lab, engine_process, job_file("later", "c1=fail c2=pass"))
    assert json.loads(cli(settings, "job", "show", str(later), "--json").stdout)["results"][
        "verdict"
    ].startswith("no new failures")


def test_job_logs_follow_shows_output_while_the_task_still_runs(settings, lab, engine_process):
    run = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done"
    text = f"name: j\nsteps:\n  - {{name: s, vms: [v1], run: '{run}'}}\n"
    job = submit(settings, lab, "j", text)
    engine = engine_process()
    wait_for(lambda: task_rows(settings, job)[0]["status"] == "running", 30, what="task running")
    env = {"TESTLAB_HOME": str(settings.home), "TESTLAB_DB": settings.database_url, "PATH": "/usr/bin:/bin"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "testlab", "job", "logs", str(job), "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = follower.stdout.readline()
    assert first.startswith("tick"), first
    assert task_rows(settings, job)[0]["status"] == "running", "output seen while the task still runs"
    rest = follower.stdout.read()
    assert follower.wait(timeout=30) == 0
    assert "tick 6" in first + rest
    assert wait_for_jobs(settings, [job], 30, engine) == {job: "completed"}


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: records what it gets; answers 500 to the first request."""

    received: list[tuple[dict, bytes, int]] = []

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if not self.received else 200
        self.received.append((dict(self.headers), body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_webhook_is_signed_retried_and_delivered_once_across_an_engine_kill(settings, lab):
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    secret = run_transaction(settings.database_url, lambda s: add_webhook(s, "ci", url, "jobs"))
    job = submit(settings, lab, "j", job_file("j", "a=fail"), {"report.sh": REPORTER})
    env = {"TESTLAB_NOTIFY_RETRY": "4"}
    engine = EngineProcess(settings, env, log=lab / "engine.log").start()
    try:
        wait_for(lambda: len(Receiver.received) == 1, 60, what="the first attempt")
        wait_for(lambda: _attempts(settings) == 1, 10, what="the failed attempt recorded")
        engine.kill()  # between the attempts
        engine = EngineProcess(settings, env, log=lab / "engine.log").start()
        wait_for(lambda: _delivered(settings), 60, what="the delivery")
        time.sleep(5)  # nothing more arrives
    finally:
        engine.stop()
        server.shutdown()
    assert [status for _, _, status in Receiver.received] == [500, 200]
    (first_headers, first_body, _), (headers, body, _) = Receiver.received
    assert headers["X-Testlab-Delivery"] == first_headers["X-Testlab-Delivery"] and body == first_body
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Testlab-Signature"] == expected
    payload = json.loads(body)
    assert payload["type"] == "job" and payload["job"]["id"] == job and payload["job"]["status"] == "failed"
    assert payload["id"] == headers["X-Testlab-Delivery"]
    assert [case["name"] for case in payload["new_failures"]] == ["a"]


def _attempts(settings) -> int:
    with session_scope(settings.database_url, readonly=True) as session:
        return session.scalar(select(func.max(Delivery.attempts))) or 0


def _delivered(settings) -> bool:
    with session_scope(settings.database_url, readonly=True) as session:
        return session.scalar(select(Delivery.status)) == "delivered"


def test_an_email_reaches_the_owner_with_the_new_failures(settings, lab):
    from aiosmtpd.controller import Controller

    class Inbox:
        messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
            self.messages.append(envelope)
            return "250 OK"

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        run_transaction(settings.database_url, lambda s: add_user(s, "tester"))
        run_transaction(
            settings.database_url,
            lambda s: set_notifications(s, "tester", email="tester@lab.test", notify_on="failure"),
        )
        job = submit(settings, lab, "j", job_file("j", "a=fail b=pass"), {"report.sh": REPORTER})
        env = {"TESTLAB_SMTP": f"smtp://127.0.0.1:{port}"}
        engine = EngineProcess(settings, env, log=lab / "engine.log").start()
        try:
            wait_for(lambda: inbox.messages, 60, what="the e-mail")
        finally:
            engine.stop()
    finally:
        controller.stop()
    (message,) = inbox.messages
    assert message.rcpt_tos == ["tester@lab.test"]
    text = message.content.decode()
    assert f"job {job} j: failed, 1 new failure" in text
    assert "unit: a" in text and "a broke" in text


def test_gc_removes_old_jobs_and_nothing_else(settings, lab, engine_process):
    ids = run_jobs(
        settings,
        lab,
        engine_process,
        job_file("old", "a=pass"),
        job_file("old-reference", "a=pass", extra="reference: true\n"),
        job_file("recent", "a=pass"),
    )
    old, reference, recent = ids
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job).where(Job.id.in_([old, reference])).values(ended=utcnow() - timedelta(days=40))
        )
    dry = cli(settings, "gc", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"job {old} " in dry.stdout and "would remove: 1 job(s)" in dry.stdout
    assert settings.job_dir(old).exists()
    done = cli(settings, "gc", "--older-than", "30d")
    assert "removed: 1 job(s)" in done.stdout, done.stdout
    with session_scope(settings.database_url, readonly=True) as session:
        assert set(session.scalars(select(Job.id))) == {reference, recent}
    assert not settings.job_dir(old).exists()
    assert settings.job_dir(reference).exists() and settings.job_dir(recent).exists()
    assert results(settings, reference) and results(settings, recent)
