"""The web server as a real process on a real port (`testlab serve`, with the engine in it when a
test needs jobs to run), over a local sandbox lab, on SQLite and PostgreSQL (`lab_db`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from testlab.db.session import session_scope
from testlab.services.users import add_token, add_user, set_password
from tests.engine.harness import FAST_ENGINE, make_lab, power_off_lab
from tests.support.postgres import free_port

PASSWORD = "correct horse battery"
JOB = """\
name: {name}
priority: 20
steps:
  - name: build
    vms: [a1]
    files: [build.sh, lib/helper.sh]
    run: sh build.sh
    artifacts: [out/*]
  - name: test
    after: build
    vms: [a2, b1]
    run: 'test -f out/report.html && echo "tested on $TESTLAB_VM"'
    timeout: 30s
"""
BUILD = """\
. lib/helper.sh
mkdir -p out
echo "<html><script>alert(1)</script></html>" > out/report.html
echo "result for $TESTLAB_VM" > out/result.txt
for i in 1 2 3; do say "building step $i"; sleep {pause}; done
"""
HELPER = 'say() { echo "$@"; }\n'


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, user: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def write_job(directory: Path, name: str = "build and test", pause: float = 0.05) -> Path:
    """A job folder: a build step whose artifacts feed a test step on two VMs."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lib").mkdir(exist_ok=True)
    (directory / "build.sh").write_text(BUILD.format(pause=pause))
    (directory / "lib" / "helper.sh").write_text(HELPER)
    path = directory / "job.yaml"
    path.write_text(JOB.format(name=name))
    return path


def job_upload(path: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """The multipart fields of a job folder as the API takes them."""
    files = [("job", (path.name, path.read_bytes()))]
    for relative in ("build.sh", "lib/helper.sh"):
        files.append(("file", (relative, (path.parent / relative).read_bytes())))
    return files


def _users(url: str) -> dict[str, str]:
    tokens = {}
    with session_scope(url) as session:
        tokens["admin"] = add_user(session, "admin", admin=True)
        tokens["alice"] = add_user(session, "alice")
        tokens["bob"] = add_user(session, "bob")
        for name in ("admin", "alice", "bob"):
            set_password(session, name, PASSWORD)
        tokens["expired"] = add_token(session, "alice", name="expired", lifetime=-60)
    return tokens


@pytest.fixture
def web_lab(lab_db, tmp_path):
    """A lab of two local hosts (a1, a2 on h1; b1, b2 on h2) with users admin, alice, bob."""
    make_lab(
        lab_db.settings,
        tmp_path / "vms",
        {"h1": ["a1", "a2"], "h2": ["b1", "b2"]},
        limits="max_active: 2, max_running: 2, max_reverting: 2, max_reverts_while_running: 2",
    )
    tokens = _users(lab_db.settings.database_url)
    yield lab_db, tokens
    power_off_lab(lab_db.settings)


def start_server(lab_db, tokens: dict[str, str], *, engine: bool, extra_env: dict | None = None) -> Server:
    port = free_port()
    log = lab_db.settings.home / f"serve-{port}.log"
    env = {
        **os.environ,
        **lab_db.env,
        **FAST_ENGINE,
        "TESTLAB_WEB_LIVE_POLL": "0.2",
        "TESTLAB_WEB_LOGIN_MAX_PER_NAME": "5",
        **(extra_env or {}),
    }
    env.pop("TESTLAB_TOKEN", None)
    argv = [sys.executable, "-m", "testlab", "serve", "--port", str(port)] + (["--engine"] if engine else [])
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", lab_db.settings.home, process, log, dict(tokens))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"testlab serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code in (200, 503):
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError(f"testlab serve did not answer: {log.read_text()[-3000:]}")


@pytest.fixture
def serve(web_lab):
    """start(engine=...) -> a running server over the lab; stopped after the test."""
    lab_db, tokens = web_lab
    servers: list[Server] = []

    def start(engine: bool = True, extra_env: dict | None = None) -> Server:
        server = start_server(lab_db, tokens, engine=engine, extra_env=extra_env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_for_job(server: Server, job_id: int, timeout: float = 60.0) -> dict:
    final = {"completed", "failed", "boterror", "timeout", "canceled", "skipped"}
    deadline = time.monotonic() + timeout
    with server.client("admin") as http:
        while time.monotonic() < deadline:
            view = http.get(f"/api/v1/jobs/{job_id}").json()
            if view["status"] in final:
                return view
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {view}\n{server.log.read_text()[-3000:]}")
