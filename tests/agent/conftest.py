"""Real agents as separate processes on 127.0.0.1, restartable on the same port and work dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import testlab.agent.server as server_module
from tests.tools.faultproxy import FaultProxy

SERVER = Path(server_module.__file__)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
    """Runs one asyncio scenario with a hard deadline so a broken test fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class AgentProcess:
    def __init__(self, tmp: Path, extra_args: list[str] | None = None, tls: tuple[Path, Path] | None = None):
        self.workdir = tmp / "work"
        self.token = secrets.token_hex(16)
        self.token_file = tmp / "token"
        self.token_file.write_text(self.token + "\n")
        self.extra_args = extra_args or []
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.boot_id = ""
        self.url = ""

    def start(self) -> AgentProcess:
        cmd = [sys.executable, str(SERVER), "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--token-file", str(self.token_file), "--workdir", str(self.workdir), *self.extra_args]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        deadline = time.monotonic() + 15
        while True:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            match = re.search(r"listening on (\S+) boot_id=(\w+)", line)
            if match:
                break
            # The port of a killed agent can stay busy for a moment.
            self.proc.wait(timeout=10)
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.2)
        self.url, self.boot_id = match.group(1), match.group(2)
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """Commands (and their supervisors) outlive the agent by design: tests must not leak them."""
        commands = self.workdir / ".agent" / "commands"
        if not commands.is_dir():
            return
        for d in commands.iterdir():
            if (d / "exit.json").exists():
                continue
            for name, group in (("pid.json", True), ("supervisor.json", False)):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    pid = json.loads((d / name).read_text())["pid"]
                    (os.killpg if group else os.kill)(pid, signal.SIGKILL)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    agents: list[AgentProcess] = []

    def make(name: str = "a", **kwargs: Any) -> AgentProcess:
        (tmp_path / name).mkdir()
        agent = AgentProcess(tmp_path / name, **kwargs).start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(agent_factory: Any) -> AgentProcess:
    return agent_factory()


@pytest.fixture
def proxy(agent: AgentProcess) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", agent.port) as p:
        yield p
