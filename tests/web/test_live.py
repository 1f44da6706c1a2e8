"""Live updates: an idle board costs one shared poll, however many browsers watch; a change reaches
every watcher at once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def _live_reads(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return float(re.search(r"^testlab_web_live_reads_total (\S+)$", text, re.M).group(1))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher(threading.Thread):
    """A browser's board: one server-sent-events stream, its events kept."""

    def __init__(self, server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.events: list[tuple[str, object]] = []
        self.open = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server stops at the end of the test
            self._read()

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.server.tokens['bob']}"}
        with httpx.stream(
            "GET", self.server.url + "/api/v1/board/stream", headers=headers, timeout=60
        ) as stream:
            self.open.set()
            kind = None
            for line in stream.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    self.events.append((kind, json.loads(line.split(":", 1)[1])))


def test_an_idle_board_costs_one_shared_poll(serve):
    server = serve(engine=False)  # no engine: nothing changes unless the test changes it
    watchers = [Watcher(server) for _ in range(6)]
    for watcher in watchers:
        watcher.start()
        assert watcher.open.wait(10)
    time.sleep(1.0)
    reads, cpu = _live_reads(server), _cpu_seconds(server.process.pid)
    idle = 4.0
    time.sleep(idle)
    polls = _live_reads(server) - reads
    used = _cpu_seconds(server.process.pid) - cpu
    # One read per poll (0.2 s here) for all six streams together, not six.
    assert polls <= idle / 0.2 + 3, polls
    assert used < 0.1 * idle, f"{used:.2f} s of CPU in {idle} s idle"

    with server.client("admin") as admin:
        assert admin.post("/api/v1/vms/b2/change", json={"change": "offline"}).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(w.events for w in watchers):
        time.sleep(0.05)
    for watcher in watchers:
        watcher.stop.set()
        kind, vms = watcher.events[0]
        assert kind == "vms" and [(v["name"], v["status"]) for v in vms] == [("b2", "offline")]


GATED_JOB = """\
name: gated
steps:
  - name: build
    vms: [a1]
    run: |
      echo first line
      n=0; while [ ! -e {gate} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
      echo last line
    timeout: 2m
"""


def _sse_events(lines) -> list[tuple[str, dict]]:
    """Yields (event, data) from a stream's lines as they come."""
    kind = None
    for line in lines:
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield kind, json.loads(line.split(":", 1)[1])


def test_a_live_log_ends_with_its_task_not_a_log_poll_later(serve, tmp_path):
    """The job page shows a task's end as soon as the event history says so; the task's live log must
    bring its last bytes and its end with it, not at its next look at the file (here a minute away)."""
    server = serve(engine=True, extra_env={"TESTLAB_WEB_LIVE_LOG_POLL": "60"})
    gate = tmp_path / "gate"
    with server.client("alice") as alice:  # reads time out after 30 s
        answer = alice.post(
            "/api/v1/jobs", files=[("job", ("job.yaml", GATED_JOB.format(gate=gate).encode()))]
        )
        assert answer.status_code == 201, answer.text
        task = alice.get(f"/api/v1/jobs/{answer.json()['id']}").json()["steps"][0]["tasks"][0]["id"]
        deadline = time.monotonic() + 60
        while "first line" not in alice.get(f"/api/v1/tasks/{task}/log").text:
            assert time.monotonic() < deadline, "the task did not start"
            time.sleep(0.05)
        with alice.stream("GET", f"/api/v1/tasks/{task}/log/stream") as stream:
            events = _sse_events(stream.iter_lines())
            kind, first = next(events)
            assert kind == "log" and first["text"] == "first line\n"
            gate.touch()
            opened = time.monotonic()
            rest = []
            for kind, data in events:
                rest.append((kind, data))
                if kind == "end":
                    break
            waited = time.monotonic() - opened
    assert [k for k, _ in rest] == ["log", "end"], rest
    assert rest[0][1]["text"] == "last line\n" and rest[1][1]["status"] == "completed"
    assert waited < 10, f"the end came {waited:.1f} s after the task's"
