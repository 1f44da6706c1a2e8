"""The engine's local backend in a process of its own: the work is that process's, a process that died
is started again, and it never outlives the engine that started it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import DomainState, HostUnreachable, SnapshotMissing
from testlab.hypervisor.local_process import LocalProcessBackend

from .conftest import make_local, need_agent, shutdown
from .test_local import agent_info


def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes()
        except FileNotFoundError:
            return True
        if state[state.rindex(b")") + 2 :].startswith(b"Z"):
            return True
        time.sleep(0.02)
    return False


def _process_backend(tmp_path: Path, **options: object) -> LocalProcessBackend:
    make_local(tmp_path).close()
    backend = open_backend("local", "localhost", f"local://{tmp_path / 'vms'}", options, own_process=True)
    assert isinstance(backend, LocalProcessBackend)
    return backend


def test_the_sandboxes_are_started_by_the_process_not_by_its_caller(tmp_path: Path) -> None:
    backend = _process_backend(tmp_path)
    try:
        address = backend.revert_and_locate("d1", "clean")
        assert address is not None and address == backend.agent_address("d1")
        assert agent_info(backend, "d1")["boot_id"]
        sandbox = json.loads((tmp_path / "vms" / "d1" / "agent.json").read_text())["sandbox_pid"]
        assert backend.pid is not None and backend.pid != os.getpid()
        assert _parent(sandbox) == backend.pid
        with pytest.raises(SnapshotMissing) as missing:  # the backend's typed error, as it raised it
            backend.revert("d1", "no-such-snapshot")
        assert (missing.value.host, missing.value.domain) == ("localhost", "d1")
    finally:
        shutdown(backend)


def test_a_process_that_died_fails_its_call_as_the_host_s_and_the_next_call_starts_another(
    tmp_path: Path,
) -> None:
    need_agent()
    silent = tmp_path / "silent-agent.py"  # a boot that never answers: the revert waits for it
    silent.write_text("import time\ntime.sleep(60)\n")
    backend = _process_backend(tmp_path, agent_script=str(silent), boot_timeout="30s")
    try:
        assert backend.state("d1") == DomainState.OFF
        first = backend.pid
        assert first is not None
        failure: list[BaseException] = []
        reverting = threading.Thread(
            target=lambda: failure.append(pytest.raises(HostUnreachable, backend.revert, "d1", "clean").value)
        )
        started = time.monotonic()
        reverting.start()
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        reverting.join(10)
        assert not reverting.is_alive() and time.monotonic() - started < 5
        assert "local hypervisor process" in str(failure[0])
        assert backend.state("d2") == DomainState.OFF  # a new process answers
        assert backend.pid not in (None, first)
    finally:
        shutdown(backend)


def test_a_clean_close_ends_the_process_and_the_next_call_starts_one(tmp_path: Path) -> None:
    backend = _process_backend(tmp_path)
    try:
        backend.revert("d1", "clean")
        first = backend.pid
        assert first is not None
        backend.close()
        assert _gone(first, within=1) and backend.pid is None
        assert backend.state("d1") == DomainState.RUNNING  # the domain itself runs on
        assert backend.pid not in (None, first)
    finally:
        shutdown(backend)


CALLER = """
import os, signal, sys
from testlab.hypervisor import open_backend
backend = open_backend("local", "localhost", sys.argv[1], own_process=True)
backend.state("d1")
print(backend.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_process_ends_with_the_engine_that_started_it(tmp_path: Path) -> None:
    make_local(tmp_path).close()
    caller = subprocess.run(
        [sys.executable, "-c", CALLER, f"local://{tmp_path / 'vms'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert caller.returncode == -signal.SIGKILL, caller.stderr
    assert _gone(int(caller.stdout), within=2)


def test_bad_options_are_refused_when_it_is_built_and_the_process_waits_for_a_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spare_copies must be true or false"):
        open_backend("local", "h", f"local://{tmp_path}", {"spare_copies": "yes"}, own_process=True)
    with pytest.raises(ValueError, match="local:///absolute/dir"):
        open_backend("local", "h", "local://relative", own_process=True)
    backend = open_backend("local", "h", f"local://{tmp_path}", own_process=True)
    assert isinstance(backend, LocalProcessBackend) and backend.pid is None


def test_a_revert_waits_for_its_answer_as_long_as_the_host_s_revert_deadline(tmp_path: Path) -> None:
    backend = open_backend(
        "local", "h", f"local://{tmp_path}", {"timeouts": {"revert": "30m"}}, own_process=True
    )
    assert isinstance(backend, LocalProcessBackend)
    assert backend.socket_timeout("revert") >= 1800
    assert backend.socket_timeout("revert_and_locate") >= 1800  # what the engine calls for a revert
    assert backend.socket_timeout("state") < 1800
