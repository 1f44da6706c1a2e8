"""Socket activation: the agent serves a listening socket handed over as fd 3 (LISTEN_FDS/LISTEN_PID),
including a connection that was waiting before the agent started (how testlab's guest images start it)."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from tests.agent.conftest import SERVER

# Runs in the child: put the inherited socket on fd 3 and announce it for this very pid, as a
# service manager does between fork and exec.
ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def test_agent_serves_the_socket_it_is_handed_and_hides_it_from_commands(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    early = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    early.connect()  # queued in the backlog before any agent runs
    agent_args = [str(SERVER), "--listen", "127.0.0.1:1", "--token-file", str(tmp_path / "token")]
    agent_args += ["--workdir", str(tmp_path / "work")]
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(listener.fileno()), *agent_args],
        pass_fds=(listener.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()
    try:
        assert proc.stdout is not None
        assert f"listening on http://127.0.0.1:{port} " in proc.stdout.readline()
        headers = {"Authorization": f"Bearer {token}"}
        early.request("GET", "/v1/info", headers=headers)
        answer = early.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["version"]

        body = json.dumps({"id": "env", "shell": "env > seen-env"})
        early.request(
            "POST", "/v1/commands", body=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert early.getresponse().read()
        early.request("GET", "/v1/commands/env?wait=20", headers=headers)
        assert json.loads(early.getresponse().read())["state"] == "exited"
        env = (tmp_path / "work" / "seen-env").read_text()
        assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env
    finally:
        early.close()
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
