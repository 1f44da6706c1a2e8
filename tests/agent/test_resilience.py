"""Lost connections, a killed agent and a reverted host: work goes on or the loss is detected."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from testlab.agent.client import AgentClient, AgentUnreachable, CommandUnknown
from tests.agent.conftest import AgentProcess, run
from tests.tools.faultproxy import FaultProxy


def _chaos(proxy: FaultProxy, stop: threading.Event) -> None:
    """Resets, mid-transfer cuts and a partition, over and over, until told to stop."""
    step = 0
    while not stop.wait(0.7):
        step += 1
        if step % 9 == 4:
            proxy.blackhole(2.5)
        elif step % 3 == 1:
            proxy.drop_after(150, connections=1)
        else:
            proxy.drop_all()


@pytest.mark.parametrize(
    "seconds", [pytest.param(20, id="20s"), pytest.param(60, id="60s", marks=pytest.mark.slow)]
)
def test_long_command_survives_connection_drops(agent: AgentProcess, proxy: FaultProxy, seconds: int) -> None:
    lines = seconds * 4
    shell = f"i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); sleep 0.25; done; exit 7"
    stop = threading.Event()
    received: list[bytes] = []

    async def on_output(data: bytes) -> None:
        received.append(data)

    async def scenario() -> tuple[str, int | None]:
        async with AgentClient(proxy.url(), agent.token, request_timeout=2, retry_deadline=30) as c:
            st = await c.start("long", shell=shell)
            chaos = threading.Thread(target=_chaos, args=(proxy, stop), daemon=True)
            chaos.start()
            try:
                final = await c.wait("long", boot_id=st.boot_id, on_output=on_output)
            finally:
                stop.set()
                chaos.join()
            again = await c.start("long", shell=shell)  # a retried start never runs it twice
            assert again.started == st.started
            return final.state, final.exit_code

    state, code = run(scenario(), timeout=seconds * 4 + 60)
    assert (state, code) == ("exited", 7)
    assert b"".join(received) == b"".join(b"line-%d\n" % i for i in range(1, lines + 1))
    assert proxy.stats.drops >= seconds // 2


def test_interrupted_upload_is_retried_whole(agent: AgentProcess, proxy: FaultProxy, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(6 << 20))
    proxy.drop_after(1 << 20, connections=3)

    async def scenario() -> None:
        async with AgentClient(proxy.url(), agent.token, request_timeout=5, retry_deadline=30) as c:
            await c.upload(local, "dir/big.bin")

    run(scenario())
    assert proxy.stats.drops >= 2
    remote = agent.workdir / "dir" / "big.bin"
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()
    deadline = time.monotonic() + 5
    while [p for p in remote.parent.iterdir() if ".part-" in p.name] and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent notices the cut connections on its own schedule
    assert [p.name for p in remote.parent.iterdir()] == ["big.bin"]


def test_killed_agent_comes_back_and_still_knows_its_commands(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token, request_timeout=2, retry_deadline=30) as c:
            old = await c.info()
            done = await c.start("done", shell="echo before; exit 4")
            await c.wait("done")
            later = await c.start("later", shell="sleep 1.5; echo late; exit 5")
            through = await c.start("through", shell="sleep 4; echo through")
            chunks: list[bytes] = []
            follower = asyncio.create_task(c.wait("later", boot_id=later.boot_id, on_output=chunks.append))
            await asyncio.sleep(0.3)

            agent.kill(signal.SIGKILL)
            await asyncio.sleep(2.5)  # "later" finishes while no agent is running
            await asyncio.to_thread(agent.start)

            final = await follower
            assert (final.state, final.exit_code) == ("exited", 5)
            assert b"".join(chunks) == b"late\n"
            new = await c.wait_until_up(timeout=10, not_boot_id=old.boot_id)
            assert new.commands_run == 0
            st = await c.status("done")
            assert (st.state, st.exit_code, st.boot_id) == ("exited", 4, done.boot_id)
            assert await c.read_output("done") == b"before\n"
            st = await c.status("through")
            assert st.state == "running"
            st = await c.wait("through", boot_id=through.boot_id, deadline=20)
            assert (st.state, st.exit_code) == ("exited", 0)
            assert await c.read_output("through") == b"through\n"

    run(scenario())


def test_reverted_host_is_detected(agent: AgentProcess, tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token, request_timeout=2, retry_deadline=5) as c:
            old = await c.start("old", argv=["true"])
            await c.wait("old")
            await asyncio.to_thread(shutil.copytree, agent.workdir, snapshot, symlinks=True)
            job = await c.start("job", argv=["sleep", "30"])
            with pytest.raises(CommandUnknown):
                await c.wait("old", boot_id="another-boot")

            # Revert: the machine loses its processes and its disk goes back to the snapshot.
            agent.kill(signal.SIGKILL)
            agent.kill_leftovers()
            shutil.rmtree(agent.workdir)
            shutil.copytree(snapshot, agent.workdir, symlinks=True)
            await asyncio.to_thread(agent.start)

            with pytest.raises(CommandUnknown):
                await c.wait("job", boot_id=job.boot_id)
            with pytest.raises(CommandUnknown):
                await c.status("job")
            # A command of the snapshot is known, but from an earlier boot than the one we follow.
            with pytest.raises(CommandUnknown):
                await c.wait("old", boot_id=job.boot_id if job.boot_id != old.boot_id else "x")

    run(scenario())


def test_black_holed_agent_is_reported_unreachable(agent: AgentProcess, proxy: FaultProxy) -> None:
    async def scenario() -> None:
        async with AgentClient(
            proxy.url(), agent.token, connect_timeout=1, request_timeout=1, retry_deadline=2
        ) as c:
            await c.info()
            proxy.blackhole(30)
            started = time.monotonic()
            with pytest.raises(AgentUnreachable):
                await c.info()
            assert time.monotonic() - started < 6
            with pytest.raises(AgentUnreachable):
                await c.wait_until_up(timeout=1.5)
            proxy.clear()
            assert (await c.wait_until_up(timeout=10)).boot_id == agent.boot_id

    run(scenario())
