"""A local sandbox is a PID namespace: whatever its commands do to escape their session or process
group, powering it off (or reverting it) kills all of it, so nothing of one job reaches the next."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testlab.hypervisor import local, sandbox
from testlab.hypervisor.base import Backend, DomainState, OperationFailed
from testlab.hypervisor.local import LocalBackend, _descendants, _proc_stat

from .conftest import make_local, shutdown

#: Three ways out of the command's process group (which dies with the command), each saying it is out,
#: then writing the secret by path into whatever disk the domain has 3 seconds later.
ESCAPES = """
disk=$(cd .. && pwd -P)
setsid sh -c 'touch ready-setsid; sleep 3; echo "$SECRET" > "$0/leaked-setsid.txt"' "$disk" &
{python} -c '
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
open("ready-double-fork", "w").close()
time.sleep(3)
open(sys.argv[1] + "/leaked-double-fork.txt", "w").write(os.environ["SECRET"])
' "$disk" &
{python} -c '
import os, sys, time
if os.fork():
    os._exit(0)
os.setpgid(0, 0)
open("ready-group", "w").close()
time.sleep(3)
open(sys.argv[1] + "/leaked-group.txt", "w").write(os.environ["SECRET"])
' "$disk" &
for i in $(seq 400); do
    [ -e ready-setsid ] && [ -e ready-double-fork ] && [ -e ready-group ] && break
    sleep 0.05
done
echo started
""".format(python=shlex.quote(sys.executable))


def request(backend: Backend, domain: str, path: str, body: dict | None = None) -> bytes:
    address = backend.agent_address(domain)
    assert address is not None
    req = urllib.request.Request(
        f"{address.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {address.token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def run(backend: Backend, domain: str, shell: str, env: dict[str, str] | None = None) -> str:
    """Run a command through the domain's agent, in a task directory, until it ends; its output."""
    cid = f"c{secrets.token_hex(4)}"
    request(backend, domain, "/v1/commands", {"id": cid, "shell": shell, "cwd": "task-1", "env": env or {}})
    state = json.loads(request(backend, domain, f"/v1/commands/{cid}?wait=20"))
    assert state["state"] == "exited", state
    return request(backend, domain, f"/v1/commands/{cid}/output").decode()


def holding(secret: str) -> list[int]:
    """Live processes whose environment holds the secret."""
    needle = f"SECRET={secret}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        st = _proc_stat(int(entry.name))
        if needle in environ and st is not None and st[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def leaked(backend: LocalBackend, domain: str) -> list[str]:
    return sorted(p.name for p in (backend.root / domain).rglob("leaked-*"))


def escape(backend: LocalBackend, domain: str) -> str:
    """Start the escapes; check they did leave the command behind and are alive. Returns the secret."""
    secret = secrets.token_hex(8)
    backend.power_on(domain)
    assert run(backend, domain, ESCAPES, {"SECRET": secret}) == "started\n"
    escaped = holding(secret)
    assert len(escaped) >= 3, "the escapes did not outlive their command"
    return secret


def test_power_off_kills_what_escaped_the_command(local_backend: LocalBackend) -> None:
    secret = escape(local_backend, "d1")
    local_backend.power_off("d1")
    assert holding(secret) == []
    time.sleep(3.5)
    assert leaked(local_backend, "d1") == []


def test_revert_kills_what_escaped_and_nothing_reaches_the_next_disk(local_backend: LocalBackend) -> None:
    secret = escape(local_backend, "d1")
    local_backend.revert("d1", "clean")
    assert holding(secret) == []
    time.sleep(3.5)
    assert leaked(local_backend, "d1") == []
    assert local_backend.state("d1") == DomainState.RUNNING


def _forget_records(backend: LocalBackend, domain: str) -> None:
    """What a crash between starting a sandbox and recording it leaves: a sandbox no record names."""
    settings_file = backend.root / domain / "agent.json"
    settings = json.loads(settings_file.read_text())
    for key in ("pid", "start_time", "sandbox_pid", "sandbox_start"):
        settings.pop(key, None)
    settings_file.write_text(json.dumps(settings))


def test_a_sandbox_whose_records_were_lost_is_still_killed_whole(local_backend: LocalBackend) -> None:
    """The process that started it crashed before recording it: the stray is found (by the process
    that comes next) and killed whole."""
    secret = escape(local_backend, "d1")
    _forget_records(local_backend, "d1")
    restarted = make_local(local_backend.root.parent)
    try:
        restarted.power_off("d1")
        assert holding(secret) == []
    finally:
        shutdown(restarted)


def test_another_process_that_crashed_mid_launch_leaves_no_stray_to_a_running_backend(
    local_backend: LocalBackend,
) -> None:
    """A backend that already checked the domain checks again when another process launched a
    sandbox meanwhile (the launch log grew): a crash of that process before its record is no leak."""
    local_backend.revert("d1", "clean")  # checked: every sandbox of d1 is this backend's
    other = make_local(local_backend.root.parent)
    try:
        secret = escape(other, "d1")
        _forget_records(other, "d1")
    finally:
        other.close()
    local_backend.power_off("d1")
    assert holding(secret) == []


def test_the_process_scan_for_strays_runs_only_when_a_launch_is_not_known(
    local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every process's command line costs a revert in proportion to the machine's processes:
    a backend whose launches are all recorded (or are its spare) does not repeat it."""
    scans: list[str] = []
    real = local.__dict__["_processes_using"]
    monkeypatch.setattr(local, "_processes_using", lambda path: scans.append(path) or real(path))
    for _ in range(4):
        local_backend.revert("d1", "clean")
        time.sleep(0.3)  # the spare boot of the next revert starts meanwhile
    assert [p for p in scans if p.endswith("agent.token")] == [str(local_backend.root / "d1" / "agent.token")]


def test_the_sandbox_reaps_its_orphans(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    run(local_backend, "d1", "for i in 1 2 3 4 5 6 7 8 9 10; do setsid sh -c 'sleep 0.2' & done; true")
    time.sleep(1)
    root = json.loads((local_backend.root / "d1" / "agent.json").read_text())["sandbox_pid"]
    states = [st[0] for pid in _descendants(root) if (st := _proc_stat(pid)) is not None]
    assert "Z" not in states


def test_commands_see_only_the_sandbox(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    output = run(local_backend, "d1", "tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'")
    init, count = output.splitlines()
    assert "sandbox_init.py" in init
    assert int(count) < 20  # the init, the agent, its supervisor, this command: not the machine's


def test_without_isolation_a_sandbox_does_not_start(
    local_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silent fallback: a machine that cannot create namespaces gets one line saying what is needed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(sandbox, "_probe_result", [])
    with pytest.raises(OperationFailed) as info:
        local_backend.power_on("d1")
    message = str(info.value)
    assert "\n" not in message
    assert "PID namespaces" in message and "Operation not permitted" in message and "root" in message
    assert local_backend.state("d1") == DomainState.OFF


# ------------------------------------------------------------------------------------- spare boots


def sandboxes(backend: LocalBackend, domain: str) -> list[int]:
    """The `unshare` processes of the domain's sandboxes (the running one and any spare)."""
    token = os.fsencode(backend.root / domain / "agent.token")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            st = _proc_stat(int(entry.name))
            if token in args and args[0].endswith(b"unshare") and st is not None and st[0] != "Z":
                found.append((int(entry.name), st[1]))
    pids = {pid for pid, _ in found}
    return sorted(pid for pid, parent in found if parent not in pids)  # not a child yet to exec its init


def agent_boot(backend: Backend, domain: str) -> str:
    return json.loads(request(backend, domain, "/v1/info"))["boot_id"]


def recorded_sandbox(backend: LocalBackend, domain: str) -> int:
    return json.loads((backend.root / domain / "agent.json").read_text())["sandbox_pid"]


def spare_boot(backend: LocalBackend, domain: str) -> int:
    """The domain's spare sandbox, once the backend has started it."""
    backend.wait_idle()
    spares = [pid for pid in sandboxes(backend, domain) if pid != recorded_sandbox(backend, domain)]
    assert len(spares) == 1, spares
    return spares[0]


def test_the_next_boot_is_started_ahead_and_runs_nothing_until_the_revert(
    local_backend: LocalBackend,
) -> None:
    local_backend.power_on("d1")
    first = agent_boot(local_backend, "d1")
    spare = spare_boot(local_backend, "d1")
    time.sleep(1)  # loaded and waiting
    init_and_agent = _descendants(spare)
    assert len(init_and_agent) == 2, "a spare runs no command before its boot"
    args = (Path("/proc") / str(init_and_agent[-1]) / "cmdline").read_bytes().split(b"\0")
    port = int(args[args.index(b"--listen") + 1].rsplit(b":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.settimeout(0.5)
        connection.sendall(b"GET /v1/info HTTP/1.0\r\n\r\n")
        with pytest.raises(TimeoutError):
            connection.recv(1)  # queued: its agent does not serve before the boot that takes it
    local_backend.revert("d1", "clean")
    assert recorded_sandbox(local_backend, "d1") == spare
    assert agent_boot(local_backend, "d1") != first
    assert spare_boot(local_backend, "d1") != spare  # the next one


def test_without_spare_boots_only_the_running_sandbox_exists(tmp_path: Path) -> None:
    backend = make_local(tmp_path, spare_boots=False)
    try:
        backend.power_on("d1")
        backend.revert("d1", "clean")
        backend.wait_idle()
        assert sandboxes(backend, "d1") == [recorded_sandbox(backend, "d1")]
    finally:
        shutdown(backend)


def test_power_off_ends_the_spare_boot_too(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    spare_boot(local_backend, "d1")
    local_backend.power_off("d1")
    assert sandboxes(local_backend, "d1") == []


def test_a_dead_spare_boot_gives_way_to_a_new_sandbox(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    first = agent_boot(local_backend, "d1")
    spare = spare_boot(local_backend, "d1")
    os.killpg(spare, signal.SIGKILL)
    local_backend.revert("d1", "clean")
    assert recorded_sandbox(local_backend, "d1") != spare
    assert agent_boot(local_backend, "d1") != first


SPARE_OWNER = """
import sys, time
from testlab.hypervisor.local import LocalBackend
backend = LocalBackend("localhost", sys.argv[1], {})
backend.power_on("d1")
backend.wait_idle()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_spare_boot_ends_with_the_process_that_started_it(local_backend: LocalBackend) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", SPARE_OWNER, local_backend.uri], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        spare = spare_boot(local_backend, "d1")
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while spare in sandboxes(local_backend, "d1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spare not in sandboxes(local_backend, "d1"), "a spare outlived the backend that owned it"
    assert local_backend.state("d1") == DomainState.RUNNING  # the running agent outlives it, by design
