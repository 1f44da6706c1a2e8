"""Timeouts and kills reach every process of a command, not just its leader."""

from __future__ import annotations

import os
import time
from pathlib import Path

from testlab.agent.client import AgentClient
from tests.agent.conftest import AgentProcess, run

# A leader with a background child that would outlive it if only the leader were killed.
FAMILY = "sleep 300 & echo $! > child.pid; echo started; sleep 300"


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie still answers kill(0) until its parent reaps it
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_the_process_group(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            st = await c.start("slow", shell=FAMILY, timeout=1.0)
            final = await c.wait("slow", boot_id=st.boot_id, deadline=30)
            assert final.state == "timeout" and final.finished
            assert final.exit_code is not None and final.exit_code < 0
            assert final.ended is not None and final.started is not None
            assert 0.9 <= final.ended - final.started < 10

    run(scenario())
    assert _gone(int((agent.workdir / "child.pid").read_text()))


def test_kill_kills_the_process_group(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            st = await c.start("victim", shell=FAMILY)
            out = b""
            while b"started" not in out:
                out = await c.read_output("victim")
            killed = await c.kill("victim")
            assert killed.state == "killed" and killed.finished
            again = await c.kill("victim")  # idempotent
            assert again == killed
            assert (await c.wait("victim", boot_id=st.boot_id)).state == "killed"

    run(scenario())
    assert _gone(int((agent.workdir / "child.pid").read_text()))
