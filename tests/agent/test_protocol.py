"""The agent's ordinary work: info, files in and out, commands and their output."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testlab.agent.client import AgentClient, BootChanged, CommandState, CommandUnknown, ProtocolError
from tests.agent.conftest import AgentProcess, run


def client(agent: AgentProcess, **kwargs: object) -> AgentClient:
    return AgentClient(agent.url, agent.token, **kwargs)  # type: ignore[arg-type]


def test_info_reports_the_contract_fields(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with client(agent) as c:
            info = await c.info()
            assert info.boot_id == agent.boot_id
            assert info.version and info.hostname and info.os
            assert info.free_disk_bytes > 0
            assert info.commands_run == 0
            await c.start("one", argv=["true"])
            assert (await c.info()).commands_run == 1

    run(scenario())


def test_command_output_and_exit_code(agent: AgentProcess) -> None:
    async def scenario() -> CommandState:
        async with client(agent) as c:
            chunks: list[bytes] = []
            st = await c.start(
                "c1",
                shell="echo out; echo err >&2; echo $GREETING; pwd; exit 3",
                env={"GREETING": "hi"},
                cwd="sub",
            )
            assert st.state in ("running", "exited") and st.boot_id == agent.boot_id
            final = await c.wait("c1", boot_id=st.boot_id, on_output=chunks.append)
            assert (
                b"".join(chunks) == b"out\nerr\nhi\n" + str(agent.workdir.resolve() / "sub").encode() + b"\n"
            )
            assert await c.read_output("c1", offset=4) == b"".join(chunks)[4:]
            assert await c.read_output("c1", offset=4, limit=3) == b"err"
            return final

    final = run(scenario())
    assert final.state == "exited" and final.exit_code == 3 and final.finished
    assert final.started is not None and final.ended is not None and final.ended >= final.started


def test_start_is_idempotent_by_id(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with client(agent) as c:
            first = await c.start("once", shell="echo run >> runs.txt")
            second = await c.start("once", shell="echo run >> runs.txt")
            assert second.started == first.started
            await c.wait("once")
            third = await c.start("once", shell="echo run >> runs.txt")
            assert third.state == "exited"
            assert (await c.info()).commands_run == 1

    run(scenario())
    assert (agent.workdir / "runs.txt").read_text() == "run\n"


def test_a_start_for_another_boot_starts_nothing(agent: AgentProcess) -> None:
    """The engine names the boot it prepared the VM for; an agent that restarted since refuses."""

    async def scenario() -> None:
        async with client(agent) as c:
            with pytest.raises(BootChanged, match="boot_changed|boot id"):
                await c.start("stale", shell="echo run >> runs.txt", boot_id="0" * 32)
            with pytest.raises(CommandUnknown):
                await c.status("stale")
            with pytest.raises(ProtocolError, match="'boot_id' must be a string"):
                await c._json(
                    "POST", "/v1/commands", "start", body={"id": "x", "argv": ["true"], "boot_id": 7}
                )
            started = await c.start("fresh", argv=["true"], boot_id=agent.boot_id)
            assert started.boot_id == agent.boot_id

    run(scenario())
    assert not (agent.workdir / "runs.txt").exists()


def test_the_last_output_carries_the_final_state(agent: AgentProcess) -> None:
    """Following a command to its end takes no status request after the last output."""

    async def scenario() -> None:
        async with client(agent) as c:
            started = await c.start("short", shell="echo done; exit 4")
            asked: list[str] = []

            async def status(command_id: str, *, wait: float = 0) -> CommandState:
                asked.append(command_id)
                raise AssertionError("no status request expected")

            c.status = status  # type: ignore[method-assign]
            chunks: list[bytes] = []
            final = await c.wait("short", boot_id=started.boot_id, on_output=chunks.append)
            assert final.state == "exited" and final.exit_code == 4 and final.ended is not None
            assert b"".join(chunks) == b"done\n" and asked == []
            # Mid-output, nothing final is promised yet.
            data, state, _, promised = await c._output("short", 0, 2, 0.0)
            assert data == b"do" and state == "exited" and promised is None

    run(scenario())


def test_unknown_command_and_bad_command(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with client(agent) as c:
            with pytest.raises(CommandUnknown):
                await c.status("never-started")
            with pytest.raises(ProtocolError, match="command id"):
                await c.start("bad/id", argv=["true"])
            st = await c.start("missing-binary", argv=["/no/such/program"])
            final = await c.wait("missing-binary", boot_id=st.boot_id)
            assert final.exit_code == 127
            assert b"cannot run" in await c.read_output("missing-binary")

    run(scenario())


def test_upload_download_delete_round_trip(agent: AgentProcess, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(3 << 20))
    os.chmod(local, 0o750)

    async def scenario() -> None:
        async with client(agent) as c:
            await c.upload(local, "in/payload.bin")
            await c.upload_bytes(b"#!/bin/sh\necho from script\n", "in/run.sh", mode=0o755)
            await c.upload_bytes(b"a", "logs/a.log")
            await c.upload_bytes(b"bb", "logs/deep/b.log")
            started = await c.start("script", argv=["./in/run.sh"])
            assert started.id == "script" and started.boot_id  # running, or already exited: it is quick
            await c.wait("script")
            assert await c.read_output("script") == b"from script\n"

            got = await c.download("in/payload.bin", tmp_path / "one")
            assert got == [tmp_path / "one" / "in" / "payload.bin"]
            assert got[0].read_bytes() == local.read_bytes()

            got = await c.download("logs/**/*.log", tmp_path / "many")
            assert sorted(p.relative_to(tmp_path / "many").as_posix() for p in got) == [
                "logs/a.log",
                "logs/deep/b.log",
            ]
            got = await c.download("logs", tmp_path / "tree")
            assert (tmp_path / "tree" / "logs" / "deep" / "b.log").read_bytes() == b"bb"
            assert await c.download("nothing/*.xml", tmp_path / "none") == []
            assert await c.download("missing.txt", tmp_path / "none") == []

            await c.delete("logs")
            await c.delete("logs")  # deleting again is harmless
            assert await c.download("logs/**", tmp_path / "gone") == []

    run(scenario())
    stored = agent.workdir / "in" / "payload.bin"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
    assert stored.stat().st_mode & 0o777 == 0o750
    assert (agent.workdir / "in" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not [p for p in (agent.workdir / "in").iterdir() if ".part-" in p.name]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    agent = agent_factory("tls", tls=(cert, key))
    assert agent.url.startswith("https://")

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token, verify=str(cert)) as c:
            assert (await c.info()).boot_id == agent.boot_id
            await c.start("t", argv=["true"])
            assert (await c.wait("t")).exit_code == 0

    run(scenario())
