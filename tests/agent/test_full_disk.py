"""A task that fills the disk holding the agent's state: how each command ended is still recorded.

The agent's work dir is a real 8 MiB tmpfs, so the disk is really full (no mocking of write errors).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testlab.agent.client import AgentClient, ProtocolError
from tests.agent.conftest import AgentProcess, run


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/a/work on an 8 MiB tmpfs of its own; needs root to mount (the test machines run as root)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small tmpfs for the full-disk test needs root")
    mount_point = tmp_path / "a" / "work"
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    try:
        yield tmp_path / "a"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_exit_status_is_recorded_on_a_full_disk(small_disk: Path) -> None:
    agent = AgentProcess(small_disk).start()
    try:

        async def scenario() -> None:
            async with AgentClient(agent.url, agent.token, retry_deadline=10) as c:
                sleeper = await c.start("sleeper", shell="sleep 60", timeout=2)
                filler = await c.start("filler", shell="dd if=/dev/zero of=big bs=1M count=64; exit $?")
                final = await c.wait("filler", boot_id=filler.boot_id)
                # dd's own failure status, not a lost command and not an agent error.
                assert (final.state, final.exit_code) == ("exited", 1), final
                assert (await c.info()).free_disk_bytes < 64 * 1024
                timed_out = await c.wait("sleeper", boot_id=sleeper.boot_id)
                assert timed_out.state == "timeout" and timed_out.exit_code is not None, timed_out

                # No room to start another command: a clear refusal, and the id is not used up.
                with pytest.raises(ProtocolError, match="507.*no space left") as info:
                    await c.start("after", shell="true")
                assert info.value.code == "disk_full"
                await c.delete("big")
                again = await c.start("after", shell="exit 5")
                assert (await c.wait("after", boot_id=again.boot_id)).exit_code == 5

        run(scenario(), timeout=60)
        # A restarted agent reads the same records.
        agent.kill()
        agent.start()

        async def after_restart() -> None:
            async with AgentClient(agent.url, agent.token) as c:
                states = {cid: await c.status(cid) for cid in ("filler", "after", "sleeper")}
                assert (states["filler"].state, states["filler"].exit_code) == ("exited", 1)
                assert (states["after"].state, states["after"].exit_code) == ("exited", 5)
                assert states["sleeper"].state == "timeout"

        run(after_restart(), timeout=30)
    finally:
        agent.stop()
