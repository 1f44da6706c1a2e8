"""Big files: staged uploads committed by digest, bulk connections that break, stall or get cancelled."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testlab.agent.client import BULK_THRESHOLD, AgentClient, AgentUnreachable, ProtocolError
from tests.agent.conftest import AgentProcess, run
from tests.tools.faultproxy import FaultProxy


def _request(agent: AgentProcess, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    req = urllib.request.Request(
        agent.url + target, data=body if method in ("PUT", "POST") else None, method=method
    )
    req.add_header("Authorization", f"Bearer {agent.token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _visible(agent: AgentProcess) -> list[str]:
    return sorted(
        p.relative_to(agent.workdir).as_posix()
        for p in agent.workdir.rglob("*")
        if ".agent" not in p.relative_to(agent.workdir).parts
    )


def test_staged_upload_appears_only_when_committed_with_its_digest(agent: AgentProcess) -> None:
    body = os.urandom(3000)
    digest = hashlib.sha256(body).hexdigest()
    status, answer = _request(agent, "PUT", "/v1/files?path=d/f.bin&mode=600&upload=u1", body)
    assert (status, answer["sha256"], answer["size"], answer["upload"]) == (200, digest, 3000, "u1")
    assert _visible(agent) == ["d"]  # the parent exists, the file does not

    status, answer = _request(agent, "POST", f"/v1/files/commit?upload=u1&sha256={digest}")
    assert (status, answer) == (200, {"path": "d/f.bin", "size": 3000, "sha256": digest})
    assert (agent.workdir / "d" / "f.bin").read_bytes() == body
    assert (agent.workdir / "d" / "f.bin").stat().st_mode & 0o777 == 0o600
    # A retried commit (its answer was lost) gets the same answer and changes nothing.
    assert _request(agent, "POST", f"/v1/files/commit?upload=u1&sha256={digest}") == (200, answer)

    status, answer = _request(agent, "PUT", "/v1/files?path=d/g.bin&upload=u2", body)
    status, answer = _request(agent, "POST", "/v1/files/commit?upload=u2&sha256=" + "0" * 64)
    assert (status, answer["code"]) == (422, "checksum")
    status, answer = _request(agent, "POST", f"/v1/files/commit?upload=u2&sha256={digest}")
    assert (status, answer["code"]) == (404, "unknown_upload")
    assert _visible(agent) == ["d", "d/f.bin"]
    assert list((agent.workdir / ".agent" / "uploads").iterdir()) == []

    assert _request(agent, "PUT", "/v1/files?path=x&upload=../x", b"x")[0] == 400
    assert _request(agent, "POST", "/v1/files/commit?upload=u3")[0] == 400


def test_restarted_agent_forgets_staged_uploads(agent: AgentProcess) -> None:
    body = b"staged"
    digest = hashlib.sha256(body).hexdigest()
    assert _request(agent, "PUT", "/v1/files?path=s.bin&upload=u9", body)[0] == 200
    agent.stop()
    agent.start()
    status, answer = _request(agent, "POST", f"/v1/files/commit?upload=u9&sha256={digest}")
    assert (status, answer["code"]) == (404, "unknown_upload")
    assert list((agent.workdir / ".agent" / "uploads").iterdir()) == []
    assert _visible(agent) == []


def test_big_bytes_and_files_round_trip(agent: AgentProcess, tmp_path: Path) -> None:
    data = os.urandom(BULK_THRESHOLD + 12345)
    local = tmp_path / "exact.bin"
    local.write_bytes(os.urandom(BULK_THRESHOLD))

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            await c.upload_bytes(data, "big/data.bin", mode=0o640)
            await c.upload(local, "big/exact.bin")
            got = await c.download("big", tmp_path / "back")
            assert sorted(p.name for p in got) == ["data.bin", "exact.bin"]

    run(scenario())
    assert (tmp_path / "back" / "big" / "data.bin").read_bytes() == data
    assert (tmp_path / "back" / "big" / "exact.bin").read_bytes() == local.read_bytes()
    assert (agent.workdir / "big" / "data.bin").stat().st_mode & 0o777 == 0o640
    assert _visible(agent) == ["big", "big/data.bin", "big/exact.bin"]


def test_replaced_big_file_is_freed_after_the_answer(agent: AgentProcess, tmp_path: Path) -> None:
    first, second = os.urandom(9 << 20), os.urandom(9 << 20)

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            await c.upload_bytes(first, "f.bin")
            await c.upload_bytes(second, "f.bin")

    run(scenario())
    assert (agent.workdir / "f.bin").read_bytes() == second
    trash = agent.workdir / ".agent" / "trash"
    deadline = time.monotonic() + 5
    while list(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(trash.iterdir()) == []


def test_bulk_refusals_are_reported_not_retried(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("small", extra_args=["--max-upload-bytes", str(4 << 20)])
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(2 << 20))
    (agent.workdir / "adir").mkdir(parents=True)

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token, retry_deadline=30) as c:
            started = time.monotonic()
            with pytest.raises(ProtocolError, match="directory"):
                await c.upload(local, "adir")
            with pytest.raises(ProtocolError, match="outside|'..'"):
                await c.upload(local, "../escape.bin")
            with pytest.raises(ProtocolError, match="limit"):
                await c.upload_bytes(os.urandom(5 << 20), "big.bin")
            assert time.monotonic() - started < 10

    run(scenario())
    assert _visible(agent) == ["adir"]


def test_interrupted_download_is_retried(agent: AgentProcess, proxy: FaultProxy, tmp_path: Path) -> None:
    payload = os.urandom(6 << 20)
    (agent.workdir / "out").mkdir(parents=True)
    (agent.workdir / "out" / "big.bin").write_bytes(payload)
    proxy.drop_after(1 << 20, connections=2)

    async def scenario() -> list[Path]:
        async with AgentClient(proxy.url(), agent.token, request_timeout=5, retry_deadline=30) as c:
            return await c.download("out/big.bin", tmp_path / "dl")

    got = run(scenario())
    assert proxy.stats.drops >= 2
    assert got == [tmp_path / "dl" / "out" / "big.bin"]
    assert got[0].read_bytes() == payload


def test_stalled_bulk_transfer_is_unreachable_and_cancellable(
    agent: AgentProcess, proxy: FaultProxy, tmp_path: Path
) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(4 << 20))

    async def scenario() -> None:
        async with AgentClient(
            proxy.url(), agent.token, connect_timeout=1, request_timeout=1, retry_deadline=2
        ) as c:
            await c.info()
            proxy.blackhole(30)
            started = time.monotonic()
            with pytest.raises(AgentUnreachable):
                await c.upload(local, "f.bin")
            with pytest.raises(AgentUnreachable):
                await c.download("f.bin", tmp_path / "dl")
            assert time.monotonic() - started < 15
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.upload(local, "f.bin"), 0.5)
            assert time.monotonic() - started < 3

    run(scenario())
    proxy.clear()
    assert _visible(agent) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_bulk_transfer_over_tls(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    agent = agent_factory("tls", tls=(cert, key))
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(3 << 20))

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token, verify=str(cert)) as c:
            await c.upload(local, "t/f.bin")
            got = await c.download("t/f.bin", tmp_path / "dl")
            assert got[0].read_bytes() == local.read_bytes()
        # The default trust store does not know our certificate.
        async with AgentClient(agent.url, agent.token, retry_deadline=1) as c:
            with pytest.raises((AgentUnreachable, ProtocolError)):
                await c.download("t/f.bin", tmp_path / "dl2")

    run(scenario())
