"""Local sandbox VMs: exact, crash-safe reverts; state shared through the directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import Backend, DomainState, OperationFailed, OperationTimedOut
from testlab.hypervisor.local import LocalBackend, copy_tree

from .conftest import make_local, need_agent, shutdown

AGENT_STATE = ".agent"  # the agent's own bookkeeping inside its work dir


def manifest(root: Path) -> dict[str, tuple[str, ...]]:
    """Everything a revert must restore: type, mode, content or link target, per relative path."""
    result: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != AGENT_STATE]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = path.lstat()
            if path.is_symlink():
                result[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                result[rel] = ("dir", oct(st.st_mode & 0o7777))
            else:
                result[rel] = (
                    "file",
                    oct(st.st_mode & 0o7777),
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
    return result


def populate(disk: Path, files: int = 40, tag: str = "") -> None:
    for i in range(files):
        sub = disk / f"dir{i % 4}" / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.txt").write_text(f"{tag} content {i}\n" * (i + 1))
    (disk / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (disk / "script.sh").chmod(0o755)
    (disk / "link").symlink_to("dir1/file1.txt")


def agent_info(backend: Backend, domain: str) -> dict[str, object]:
    address = backend.agent_address(domain)
    assert address is not None
    request = urllib.request.Request(
        f"{address.url}/v1/info", headers={"Authorization": f"Bearer {address.token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("spare_copies", [True, False])
def test_revert_restores_the_disk_exactly(tmp_path: Path, spare_copies: bool) -> None:
    backend = make_local(tmp_path, spare_copies=spare_copies)
    try:
        disk = backend.root / "d1" / "disk"
        populate(disk)
        backend.create_snapshot("d1", "base")
        expected = manifest(disk)
        for _round in range(3):  # the second and third rounds use the spare copy when enabled
            backend.power_on("d1")
            (disk / "created.txt").write_text("new")
            (disk / "dir1" / "newdir").mkdir()
            (disk / "dir2" / "file2.txt").unlink()
            (disk / "link").unlink()
            with open(disk / "dir1" / "file1.txt", "r+b") as f:  # in place: would corrupt a hard link
                f.write(b"XX")
            (disk / "script.sh").chmod(0o600)
            assert manifest(disk) != expected
            backend.revert("d1", "base")
            assert manifest(disk) == expected
            assert manifest(backend.root / "d1" / "snapshots" / "base") == expected
            assert backend.state("d1") == DomainState.RUNNING
            backend.wait_idle()
    finally:
        shutdown(backend)


def test_revert_gives_a_new_boot_and_a_working_agent(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    first = agent_info(local_backend, "d1")
    local_backend.revert("d1", "clean")
    second = agent_info(local_backend, "d1")
    assert first["boot_id"] != second["boot_id"]
    local_backend.power_off("d1")
    assert local_backend.agent_address("d1") is None


def test_a_proxy_in_the_environment_does_not_keep_the_agent_from_answering(
    local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's agent listens on 127.0.0.1: the backend asks it directly, whatever proxy the
    environment names for other traffic (as the engine's agent client does)."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    local_backend.power_on("d1")
    assert local_backend.state("d1") == DomainState.RUNNING


def test_state_is_shared_with_a_second_instance(local_backend: LocalBackend) -> None:
    other = open_backend("local", "localhost", local_backend.uri)
    local_backend.power_on("shared")
    assert other.state("shared") == DomainState.RUNNING
    assert other.agent_address("shared") == local_backend.agent_address("shared")
    assert sorted(other.list_snapshots("shared")) == ["clean", "clean-fr"]
    other.power_off("shared")
    assert local_backend.state("shared") == DomainState.OFF


def test_power_off_kills_a_process_left_running(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    pid = json.loads((local_backend.root / "d1" / "agent.json").read_text())["pid"]
    local_backend.power_off("d1")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_ensure_domain_creates_domain_and_snapshot(tmp_path: Path) -> None:
    need_agent()
    backend = open_backend("local", "localhost", f"local://{tmp_path}/fresh")
    assert backend.state("new") == DomainState.MISSING
    backend.ensure_domain("new", "clean")
    assert backend.state("new") == DomainState.OFF
    assert backend.list_snapshots("new") == ["clean"]
    backend.ensure_domain("new", "clean")  # idempotent
    backend.revert("new", "clean")
    assert backend.state("new") == DomainState.RUNNING
    backend.power_off("new")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_bad_names_are_refused_without_side_effects(local_backend: LocalBackend, name: str) -> None:
    before = sorted(p.name for p in local_backend.root.iterdir())
    with pytest.raises(OperationFailed):
        local_backend.revert(name, "clean")
    with pytest.raises(OperationFailed):
        local_backend.revert("d1", name)
    with pytest.raises(OperationFailed):
        local_backend.ensure_domain(name, "clean")
    assert sorted(p.name for p in local_backend.root.iterdir()) == before
    assert local_backend.state("d1") == DomainState.OFF


def test_bad_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="local:///"):
        open_backend("local", "h", "local://relative/path")


REVERT_LOOP = """
import sys
from testlab.hypervisor.local import LocalBackend
backend = LocalBackend("localhost", sys.argv[1], {"spare_copies": sys.argv[2] == "1"})
print("ready", flush=True)
while True:
    for snapshot in ("a", "b"):
        backend.revert("d1", snapshot)
"""


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def _spawn_with_pid(pid: int) -> subprocess.Popen | None:
    """A process that gets `pid`, as when pids wrap around on a busy machine (root only)."""
    for _ in range(20):
        NS_LAST_PID.write_text(str(pid - 1))
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="choosing the next pid needs root")
def test_the_copy_of_a_killed_revert_goes_even_when_its_pid_is_reused(tmp_path: Path) -> None:
    backend = make_local(tmp_path)
    reuser = None
    try:
        ddir = backend.root / "d1"
        populate(ddir / "disk", files=3000)
        backend.create_snapshot("d1", "a")
        proc = subprocess.Popen(
            [sys.executable, "-c", REVERT_LOOP, backend.uri, "0"], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".restore") for p in ddir.iterdir()):
            assert time.monotonic() < deadline, "no copy in progress seen"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reuser = _spawn_with_pid(proc.pid)
        if reuser is None:
            pytest.skip(f"pid {proc.pid} could not be given to another process")
        backend.power_off("d1")  # recovers what the killed revert left
        assert [p.name for p in ddir.iterdir() if p.name.startswith(".restore")] == []
        backend.revert("d1", "a")
    finally:
        if reuser is not None:
            reuser.kill()
            reuser.wait()
        shutdown(backend)


@pytest.mark.slow
def test_revert_killed_at_random_moments_never_leaves_a_partial_disk(tmp_path: Path) -> None:
    backend = make_local(tmp_path)
    try:
        disk = backend.root / "d1" / "disk"
        populate(disk, files=60, tag="A")
        backend.create_snapshot("d1", "a")
        for path in sorted(disk.rglob("*.txt"))[::2]:
            path.unlink()
        populate(disk / "dir1", files=30, tag="B")
        backend.create_snapshot("d1", "b")
        valid = [manifest(backend.root / "d1" / "snapshots" / s) for s in ("a", "b")]
        assert valid[0] != valid[1]
        rng = random.Random(1234)
        for i in range(20):
            proc = subprocess.Popen(
                [sys.executable, "-c", REVERT_LOOP, backend.uri, str(i % 2)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # The old disk, the new one, or none yet with a record of the snapshot it is going to.
            discarded = [p.name for p in (backend.root / "d1").glob(".discarded-*")]
            if disk.exists():
                assert manifest(disk) in valid, f"half-reverted disk after kill #{i}"
            else:
                assert discarded in ([".discarded-a"], [".discarded-b"]), f"no disk after kill #{i}"
            backend.power_off("d1")  # also recovers: stray agents, copies of the dead process, revert
            leftovers = [
                p.name
                for p in (backend.root / "d1").iterdir()
                if p.name.startswith((".restore", ".trash", ".discarded"))
            ]
            assert leftovers == []
            assert manifest(disk) in valid
            if discarded:  # the interrupted revert was finished
                assert manifest(disk) == valid[0 if discarded == [".discarded-a"] else 1]
        backend.revert("d1", "a")
        assert manifest(disk) == valid[0]
    finally:
        shutdown(backend)
    token_file = str(backend.root / "d1" / "agent.token")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                assert token_file.encode() not in (entry / "cmdline").read_bytes().split(b"\0")


def test_power_cycle_restarts_running_domains(local_backend: LocalBackend) -> None:
    local_backend.power_on("d1")
    before = agent_info(local_backend, "d1")["boot_id"]
    local_backend.power_cycle()
    assert local_backend.state("d1") == DomainState.RUNNING
    assert local_backend.state("d2") == DomainState.OFF
    assert agent_info(local_backend, "d1")["boot_id"] != before


def test_the_files_holding_the_token_are_private(local_backend: LocalBackend) -> None:
    ddir = local_backend.root / "d1"
    private = {"agent.json": "0o600", "agent.token": "0o600"}

    def modes() -> dict[str, str]:
        return {name: oct((ddir / name).stat().st_mode & 0o777) for name in private}

    assert modes() == private  # as created by ensure_domain
    local_backend.power_on("d1")
    assert modes() == private
    local_backend.revert("d1", "clean")
    assert modes() == private
    local_backend.power_off("d1")
    assert modes() == private
    assert not [p.name for p in ddir.iterdir() if p.name.startswith(".agent.json.")]


def test_an_interrupted_revert_is_finished_by_the_next_operation(local_backend: LocalBackend) -> None:
    ddir = local_backend.root / "d1"
    disk = ddir / "disk"
    populate(disk)
    local_backend.create_snapshot("d1", "base")
    expected = manifest(disk)
    (disk / "task-output.txt").write_text("dirty")
    os.rename(disk, ddir / ".discarded-base")  # a revert killed right after throwing the old disk away
    local_backend.power_on("d1")
    assert manifest(disk) == expected
    assert not list(ddir.glob(".discarded-*"))
    assert local_backend.state("d1") == DomainState.RUNNING


def test_a_hung_copy_is_killed_at_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cp").write_text("#!/bin/sh\nexec sleep 60\n")  # a copy stuck on a dead filesystem
    (bin_dir / "cp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "src").mkdir()
    started = time.monotonic()
    with pytest.raises(OperationTimedOut, match="overran 0.3 s"):
        copy_tree(tmp_path / "src", tmp_path / "dst", timeout=0.3)
    assert time.monotonic() - started < 5
