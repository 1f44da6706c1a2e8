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
