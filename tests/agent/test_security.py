"""Refusals: wrong token, paths leaving the work dir, oversized uploads, garbage on the wire."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testlab.agent.client import AgentClient, AuthenticationRefused, ProtocolError
from tests.agent.conftest import SERVER, AgentProcess, run


def test_help_runs_in_isolated_mode() -> None:
    out = subprocess.run(
        [sys.executable, "-I", str(SERVER), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "--token-file" in out.stdout and "--workdir" in out.stdout


def test_wrong_token_is_refused_and_nothing_is_done(agent: AgentProcess) -> None:
    async def scenario() -> None:
        async with AgentClient(agent.url, "not-the-token", retry_deadline=2) as c:
            with pytest.raises(AuthenticationRefused):
                await c.info()
            with pytest.raises(AuthenticationRefused):
                await c.upload_bytes(b"x", "planted.txt")
            with pytest.raises(AuthenticationRefused):
                await c.start("evil", shell="touch evil.txt")
        raw = httpx.put(f"{agent.url}/v1/files", params={"path": "raw.txt"}, content=b"abc", timeout=10)
        assert raw.status_code == 401 and "token" in raw.json()["error"]

    run(scenario())
    assert not (agent.workdir / "planted.txt").exists()
    assert not (agent.workdir / "raw.txt").exists()
    assert not (agent.workdir / "evil.txt").exists()
    assert not (agent.workdir / ".agent" / "commands" / "evil").exists()


def test_paths_leaving_the_work_dir_are_refused(agent: AgentProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, agent.workdir / "link-out")
    os.symlink(outside / "secret.txt", agent.workdir / "secret-link")

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            for bad in (
                "/etc/passwd",
                str(outside / "x"),
                "../x",
                "a/../../x",
                "link-out/planted",
                ".agent/x",
            ):
                with pytest.raises(ProtocolError, match="403"):
                    await c.upload_bytes(b"x", bad)
            for bad in ("/etc/passwd", "../*", "link-out/secret.txt", "secret-link", "link-out"):
                with pytest.raises(ProtocolError, match="outside|absolute|'\\.\\.'"):
                    await c.download(bad, tmp_path / "dl")
            for bad in ("/tmp", "..", "link-out/secret.txt", ".agent"):
                with pytest.raises(ProtocolError, match="403"):
                    await c.delete(bad)
            with pytest.raises(ProtocolError, match="cwd"):
                await c.start("escape", argv=["true"], cwd="link-out")
            with pytest.raises(ProtocolError, match="cwd"):
                await c.start("escape2", argv=["true"], cwd="/")
            await c.delete("secret-link")  # removes the link itself, not its target

    run(scenario())
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (agent.workdir / "secret-link").exists()
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").rglob("secret*"))


def test_oversized_upload_is_refused(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("small", extra_args=["--max-upload-bytes", "1000"])

    async def scenario() -> None:
        async with AgentClient(agent.url, agent.token) as c:
            await c.upload_bytes(b"x" * 1000, "fits.bin")
            with pytest.raises(ProtocolError, match="limit"):
                await c.upload_bytes(b"x" * 1001, "big.bin")

    run(scenario())
    # Around the client's own check, straight to the agent:
    raw = httpx.put(
        f"{agent.url}/v1/files",
        params={"path": "big2.bin"},
        content=b"y" * 5000,
        headers={"Authorization": f"Bearer {agent.token}"},
        timeout=10,
    )
    assert raw.status_code == 413
    assert (agent.workdir / "fits.bin").stat().st_size == 1000
    assert not (agent.workdir / "big.bin").exists() and not (agent.workdir / "big2.bin").exists()


def _raw_exchange(agent: AgentProcess, payload: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except OSError:
            return b""
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
        return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/"):
        return None
    return int(answer.split(b" ", 2)[1])


def test_garbage_requests_never_kill_the_server(agent: AgentProcess) -> None:
    auth = f"Authorization: Bearer {agent.token}\r\n".encode()
    body = b"{not json"
    cases = [
        os.urandom(4096),
        b"\x00\xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /v1/info HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /v1/commands HTTP/1.1\r\n" + auth + b"Content-Length: %d\r\n\r\n" % len(body) + body,
        b"POST /v1/commands HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n[]",
        b"POST /v1/commands HTTP/1.1\r\n" + auth + b"Content-Length: -5\r\n\r\n",
        b"POST /v1/commands HTTP/1.1\r\n" + auth + b"Content-Length: 99999999999\r\n\r\n",
        b"GET /v1/commands/x/output?offset=abc HTTP/1.1\r\n" + auth + b"\r\n",
        b"GET /v1/commands/x?wait=nan HTTP/1.1\r\n" + auth + b"\r\n",
        b"PUT /v1/files?path=a&mode=99 HTTP/1.1\r\n" + auth + b"Content-Length: 1\r\n\r\nx",
        b"PUT /v1/files?path=a HTTP/1.1\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        b"DELETE /v1/nowhere HTTP/1.1\r\n" + auth + b"\r\n",
    ]
    for payload in cases:
        status = _status(_raw_exchange(agent, payload))
        assert status is None or 400 <= status < 500, (payload[:80], status)
    # A client that connects and sends half a request must not stop others from being served.
    stalled = socket.create_connection(("127.0.0.1", agent.port))
    stalled.sendall(b"GET /v1/info HTTP/1.1\r\n")
    try:
        info = httpx.get(
            f"{agent.url}/v1/info", headers={"Authorization": f"Bearer {agent.token}"}, timeout=10
        )
        assert info.status_code == 200 and json.loads(info.text)["boot_id"] == agent.boot_id
    finally:
        stalled.close()
    assert agent.alive()


def test_stalled_connection_is_dropped_by_the_server(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("idle", extra_args=["--idle-timeout", "1"])
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(b"GET /v1/info HTTP/1.1\r\n")
        assert s.recv(100) == b""  # closed by the agent, not by our 10 s timeout


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/commands/c/output?offset=1e400"),
        ("GET", "/v1/commands/c/output?offset=inf"),
        ("GET", "/v1/commands/c/output?offset=-inf"),
        ("GET", "/v1/commands/c/output?offset=nan"),
        ("GET", "/v1/commands/c/output?offset=1e300"),
        ("GET", "/v1/commands/c/output?offset=9223372036854775808"),
        ("GET", "/v1/commands/c/output?limit=1e400"),
        ("GET", "/v1/commands/c/output?wait=infinity"),
        ("GET", "/v1/commands/c?wait=1e400"),
        ("POST", "/v1/commands/c/kill?wait=inf"),
    ],
)
def test_non_finite_and_huge_numbers_are_refused_with_400(
    agent: AgentProcess, method: str, target: str
) -> None:
    headers = {"Authorization": f"Bearer {agent.token}"}
    started = httpx.post(f"{agent.url}/v1/commands", json={"id": "c", "argv": ["true"]}, headers=headers)
    assert started.status_code in (200, 201)
    answer = httpx.request(method, f"{agent.url}{target}", headers=headers, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "bad_request" and answer.json()["error"]
    assert httpx.get(f"{agent.url}/v1/commands/c/output?offset=0", headers=headers).status_code == 200


@pytest.mark.parametrize("timeout", ["1e400", "NaN", "Infinity", "1" + "0" * 400])
def test_non_finite_or_huge_command_timeouts_are_refused(agent: AgentProcess, timeout: str) -> None:
    body = '{"id": "t", "argv": ["true"], "timeout": ' + timeout + "}"
    answer = httpx.post(
        f"{agent.url}/v1/commands",
        content=body,
        headers={"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert "timeout" in answer.json()["error"]
