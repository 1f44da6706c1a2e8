"""Sandbox VMs on this machine: a domain is a directory, its disk a directory tree, its "OS" the agent.

Everything lives on disk under the backend's directory (no in-memory state that matters), so the
engine, the CLI, the tests and a restarted engine all see the same domains:

    DIR/<domain>/disk/               the agent's work dir (the VM's disk)
    DIR/<domain>/snapshots/<name>/   full copies of disk, immutable once created
    DIR/<domain>/agent.json          token, and while powered on: port, the sandbox's and the agent's
                                     pids and process start times, boot id (mode 600)
    DIR/<domain>/agent.token         the token file handed to the agent (mode 600)
    DIR/<domain>/agent.log           the agent's output
    DIR/<domain>/.lock               flock held for every state-changing operation

A powered-on domain is a sandbox (sandbox.py): a PID namespace holding the agent and everything it
starts, so that powering it off kills all of it, whatever its processes did to their sessions.

A revert must be exact and crash safe: a spare copy of the snapshot is swapped in with one atomic
rename, or the old disk is emptied first and a copy renamed into place, so a process killed at any
moment leaves the old disk, the new one, or none with a record of the snapshot it was going to (the
next operation finishes that revert), never a mix. Nothing is written before the old disk is gone: a
task that filled the filesystem must not make its VM's revert fail. To keep the copy off the
revert's critical path, a spare copy of the last reverted snapshot is prepared in the background
after each revert.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from testlab.agent.bulk import BulkExchange
from testlab.agent.errors import AgentError, TransportFailure
from testlab.hypervisor import sandbox
from testlab.hypervisor.base import (
    AgentAddress,
    Backend,
    DomainMissing,
    DomainState,
    HostHealth,
    OperationFailed,
    OperationTimedOut,
    SnapshotMissing,
)
from testlab.hypervisor.driver import DEFAULT_TIMEOUTS

log = logging.getLogger("testlab.hypervisor.local")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
AGENT_SCRIPT = Path(__file__).resolve().parent.parent / "agent" / "server.py"

_RESTORE_PREFIX = ".restore-"  # a copy in progress, owned by the process its name records (pid.start)
_SPARE_PREFIX = ".spare-"  # a complete copy of a snapshot, ready to be swapped in
_TRASH_PREFIX = ".trash-"  # an old disk or a stale copy, to delete
_DISCARDED_PREFIX = ".discarded-"  # the old disk of a revert to the snapshot in its name, being emptied
_LEFTOVER_PREFIXES = (_RESTORE_PREFIX, _TRASH_PREFIX, _DISCARDED_PREFIX)  # what _cleanup_stale finishes

#: Free bytes below which an old disk is deleted before anything else is written: a task that filled
#: its disk must not make the revert's own writes (settings, the agent's first files) fail.
LOW_SPACE = 64 << 20

_LAUNCH_LOG = ".launches"  # a line per sandbox any process started: growth it did not make is news
_LAUNCH_LOG_LIMIT = 64 << 10  # bytes: a longer log is emptied (and the next check scans)
#: What agent.json records of a powered-on domain, dropped at power off.
_RUN_KEYS = ("pid", "start_time", "sandbox_pid", "sandbox_start", "port", "boot_id")


def parse_local_uri(uri: str) -> Path:
    """`local:///abs/dir` -> Path; anything else is a configuration error."""
    parts = urlsplit(uri)
    if parts.scheme != "local" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"local backend URI must look like local:///absolute/dir, not {uri!r}")
    return Path(parts.path)


# ---------------------------------------------------------------------------------------- copying


def _load_renameat2() -> Any:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the kernel or filesystem cannot (caller falls back)."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def copy_tree(src: Path, dst: Path, timeout: float = DEFAULT_TIMEOUTS["revert"]) -> str:
    """Copy a tree preserving modes, times and symlinks, never sharing inodes with the source.

    Hard links would make a task writing a file in place corrupt the snapshot, so this is a real copy,
    or a reflink (copy-on-write) where the filesystem can. A copy that overruns `timeout` seconds (a
    hung filesystem) is killed: OperationTimedOut. Returns the method name for reports.
    """
    cp = sandbox.find_program("cp")
    if cp:
        try:
            proc = subprocess.run(
                [cp, "-a", "--reflink=auto", "--no-target-directory", "--", str(src), str(dst)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise OperationTimedOut(f"copying {src} overran {timeout:g} s") from None
        if proc.returncode != 0:
            raise OperationFailed(f"copying {src} failed: {proc.stderr.strip()[-500:]}")
        return "cp -a --reflink=auto"
    shutil.copytree(src, dst, symlinks=True)
    return "shutil.copytree"


# ----------------------------------------------------------------------------------- processes


def _read_proc(pid: int, name: str) -> bytes | None:
    """A /proc file of a process, None if the process is gone (os.read: a scan of /proc is on the
    revert's critical path, and buffered file objects cost twice as much)."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 17)
    except OSError:
        return None
    finally:
        os.close(fd)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks) from /proc, None if the pid does not exist."""
    raw = _read_proc(pid, "stat")
    if not raw:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[2]), int(fields[19])


def _alive(pid: int, start_time: int) -> bool:
    """Alive and the same process: pids are reused, start times are not."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X") and st[3] == start_time


_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children_of(pid: int) -> list[int]:
    """The child pids of one process, from its threads' /proc children lists: a few reads instead
    of a pass over every process of the machine (those lists need a kernel built with
    CONFIG_PROC_CHILDREN; without them, the whole pass)."""
    if not _HAVE_CHILDREN_FILES:
        return _children().get(pid, [])
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in threads:
        raw = _read_proc(pid, f"task/{tid}/children")
        if raw:
            found += map(int, raw.split())
    return found


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry))
    return children


def _descendants(root: int) -> list[int]:
    """Every process below `root`. In a sandbox that is all of its processes: orphans are re-parented to
    the sandbox's init, whatever they did to their sessions."""
    found: list[int] = []
    todo = [root]
    while todo:
        for child in _children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _processes_using(path: str) -> list[int]:
    """Processes whose command line mentions `path`: sandboxes whose record was lost in a crash, copies
    of a killed process."""
    needle = os.fsencode(path)
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        line = _read_proc(int(entry), "cmdline")
        if line and needle in line and needle in line.split(b"\0"):
            found.append(int(entry))
    return found


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _cmdline(pid: int) -> bytes | None:
    return _read_proc(pid, "cmdline")


def _kill_tree(pids: list[int]) -> None:
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)


def _kill_and_wait(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL the processes (and their groups) and wait until they are gone; returns survivors.

    Killing a sandbox's init makes the kernel kill the rest of its namespace, and the init is gone only
    once the namespace is empty. The wait is woken by the processes' exits (pidfds) where the kernel
    has them, and polls every 5 ms where it does not."""
    started = {pid: st[3] for pid in pids if (st := _proc_stat(pid)) is not None}
    _kill_tree(list(started))
    exits = _exit_watch(started)
    deadline = time.monotonic() + timeout
    try:
        while True:
            for pid in started:
                _reap(pid)
            alive = [pid for pid, start in started.items() if _alive(pid, start)]
            remaining = deadline - time.monotonic()
            if not alive or remaining <= 0:
                return alive
            watched = [exits[pid] for pid in alive if pid in exits]
            if len(watched) == len(alive):
                select.select(watched, [], [], min(remaining, 0.5))
            else:
                time.sleep(0.005)
    finally:
        for fd in exits.values():
            os.close(fd)


def _exit_watch(started: dict[int, int]) -> dict[int, int]:
    """pid -> a pidfd that becomes readable when that process (still the one started at the recorded
    time) exits; empty where the kernel has no pidfds."""
    if not hasattr(os, "pidfd_open"):
        return {}
    fds: dict[int, int] = {}
    for pid, start in started.items():
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already, or no pidfds here
        st = _proc_stat(pid)
        if st is None or st[3] != start:  # the pid was reused meanwhile
            os.close(fd)
            continue
        fds[pid] = fd
    return fds


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _sandboxed_agent(sandbox_pid: int) -> tuple[int, int] | None:
    """(pid, start time) of the agent of a sandbox: the child of its init with the init's command line
    (it is a fork of it), or None."""
    for init in _children_of(sandbox_pid):
        line = _cmdline(init)
        for pid in _children_of(init):
            st = _proc_stat(pid)
            if st is not None and line and _cmdline(pid) == line:
                return pid, st[3]
    return None


def _recorded(settings: Mapping[str, Any], pid_key: str, start_key: str) -> int | None:
    """The pid recorded under `pid_key` if that process is still alive (same start time)."""
    pid, start = settings.get(pid_key), settings.get(start_key)
    if pid and start is not None and _alive(int(pid), int(start)):
        return int(pid)
    return None


def _init_of(agent: int) -> int | None:
    """The sandbox init above a live agent: its parent, which it is a fork of (same command line)."""
    st = _proc_stat(agent)
    line = _cmdline(agent)
    if st is None or not line or st[1] <= 1:
        return None
    return st[1] if _cmdline(st[1]) == line else None


class _Sandbox:
    """A started sandbox: its `unshare` process and that process's start time, the agent's port, and for
    a spare boot the pipe end whose first byte lets the agent start (closing it ends the spare)."""

    def __init__(self, proc: subprocess.Popen[bytes], start: int | None, port: int, go_fd: int) -> None:
        self.proc = proc
        self.start = start
        self.port = port
        self._go = go_fd
        self.launch_log: tuple[int, int] | None = None  # the launch log's size before and after its line

    def go(self) -> None:
        """Let a spare start its agent (nothing for a sandbox started as it was needed)."""
        if self._go >= 0:
            with contextlib.suppress(OSError):  # a spare that died: the wait for its agent says so
                os.write(self._go, b"g")
            os.close(self._go)
            self._go = -1

    def alive(self) -> bool:
        return self.proc.poll() is None and self.start is not None and _alive(self.proc.pid, self.start)

    def holds(self, pid: int) -> bool:
        """Whether `pid` is this sandbox's `unshare`, its init or the init's child (a spare's waiting
        agent): the processes that name the domain on their command line."""
        for _level in range(3):
            if pid == self.proc.pid:
                return True
            st = _proc_stat(pid)
            if st is None:
                return False
            pid = st[1]
        return False

    def discard(self) -> None:
        """End a spare that will not be used: closing its pipe tells it to exit; it is killed all the
        same and waited for, so that it is gone when the caller returns."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1
        if self.alive():
            _kill_and_wait([self.proc.pid, *_descendants(self.proc.pid)])
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=0)


# ------------------------------------------------------------------------------------- backend


class LocalBackend(Backend):
    """Domains as directories under one base directory; see the module docstring for the layout.

    Options: `agent_script` (path of the agent server, default testlab's own), `spare_copies` (bool,
    default True: prepare the next revert's copy in the background), `spare_boots` (bool, default
    True: start the next boot's sandbox, its agent loaded, in the background), `boot_timeout` (seconds
    to wait for the agent to answer, default 15), and those of every backend (`commands`, `timeouts`).
    """

    kind = "local"
    option_names = frozenset({"agent_script", "spare_copies", "spare_boots", "boot_timeout"})

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(host, uri, options)
        self.root = parse_local_uri(uri)
        script = self.options.get("agent_script", AGENT_SCRIPT)
        if not isinstance(script, str | os.PathLike):
            raise ValueError(f"local backend of host {host!r}: option agent_script must be a path")
        self.agent_script = Path(script)
        self.spare_copies = self.bool_option("spare_copies", True)
        self.spare_boots = self.bool_option("spare_boots", True)
        self._spare_boots: dict[Path, _Sandbox] = {}  # domain dir -> its next sandbox, loaded and waiting
        # domain dir -> the size of its launch log when every sandbox in it was known to this backend
        self._launches_known: dict[Path, int] = {}
        self.boot_timeout = self.seconds_option("boot_timeout", self.options.get("boot_timeout", 15.0))
        self.copy_method = ""
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-{host}-bg")
        self._thread_locks: dict[str, threading.Lock] = {}
        self._thread_locks_guard = threading.Lock()

    # ---- paths and validation

    def _domain_dir(self, domain: str) -> Path:
        if not isinstance(domain, str) or not _NAME_RE.match(domain):
            raise OperationFailed(f"invalid domain name {domain!r}", host=self.host, domain=domain)
        return self.root / domain

    def _existing(self, domain: str) -> Path:
        ddir = self._domain_dir(domain)
        if not (ddir / "agent.json").is_file():
            raise DomainMissing(
                f"domain {domain!r} does not exist in {self.root}", host=self.host, domain=domain
            )
        return ddir

    def _snapshot_dir(self, ddir: Path, domain: str, snapshot: str) -> Path:
        if not isinstance(snapshot, str) or not _NAME_RE.match(snapshot):
            raise OperationFailed(f"invalid snapshot name {snapshot!r}", host=self.host, domain=domain)
        return ddir / "snapshots" / snapshot

    @contextlib.contextmanager
    def _locked(self, ddir: Path) -> Iterator[None]:
        """Serialise operations on one domain across threads and processes."""
        with self._thread_locks_guard:
            tlock = self._thread_locks.setdefault(str(ddir), threading.Lock())
        with tlock:
            fd = os.open(ddir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._trim_launch_log(ddir)
                self._cleanup_stale(ddir)
                yield
            finally:
                os.close(fd)

    # ---- settings file

    def _read_settings(self, ddir: Path) -> dict[str, Any]:
        try:
            return json.loads((ddir / "agent.json").read_text())
        except FileNotFoundError:
            raise DomainMissing(
                f"domain {ddir.name!r} does not exist", host=self.host, domain=ddir.name
            ) from None
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"unreadable settings for {ddir.name!r}: {exc}", host=self.host) from exc

    def _write_settings(self, ddir: Path, settings: Mapping[str, Any]) -> None:
        """Replace agent.json atomically. A full filesystem first gets the domain's discarded disks
        deleted (a background deletion may still hold the room), then one more try."""
        try:
            self._replace_settings(ddir, settings)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self._empty_trash(ddir):
                raise
            self._replace_settings(ddir, settings)

    def _replace_settings(self, ddir: Path, settings: Mapping[str, Any]) -> None:
        """agent.json holds the agent's token, so only its owner may read it."""
        tmp = ddir / f".agent.json.{os.getpid()}.{threading.get_ident()}"
        # Compact: json's C encoder writes it, where indenting takes its pure-Python one (twice a boot).
        content = json.dumps(settings, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        replaced = False
        try:
            os.fchmod(fd, 0o600)  # a leftover of a killed writer may have had other modes
            rest = memoryview(content)
            while rest:  # one write of a few hundred bytes, unless a nearly full disk takes fewer
                rest = rest[os.write(fd, rest) :]
            os.close(fd)
            fd = -1
            os.replace(tmp, ddir / "agent.json")
            replaced = True
        finally:
            if fd >= 0:
                os.close(fd)
            if not replaced:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    # ---- crash recovery

    def _cleanup_stale(self, ddir: Path) -> None:
        """Finish what a killed process left: a disk swapped out but not moved in, a revert that threw
        the old disk away but did not put the new one in place yet, copies, trash. Runs under every
        lock: the names are read first, and only those left behind become paths."""
        names = [name for name in os.listdir(ddir) if name.startswith(_LEFTOVER_PREFIXES)]
        if not names:
            return
        disk = ddir / "disk"
        for name in sorted(names, key=lambda n: not n.endswith(".ready")):
            entry = ddir / name
            if name.startswith(_RESTORE_PREFIX) and name.endswith(".ready"):
                if not disk.exists():
                    os.rename(entry, disk)
                else:
                    self._discard(entry)
            elif name.startswith(_RESTORE_PREFIX):
                owner = name[len(_RESTORE_PREFIX) :].split("-", 1)[0]
                if owner == _owner_tag() or not _owner_alive(owner):
                    if owner == _owner_tag() and self._copy_in_flight(entry):
                        continue
                    # The copy of a killed process may still run (cp outlives its parent): it would
                    # write the directory again after it is discarded.
                    _kill_and_wait(_processes_using(str(entry)))
                    self._discard(entry)
            elif name.startswith(_TRASH_PREFIX):
                remove_tree(entry)
        for entry in [ddir / name for name in names if name.startswith(_DISCARDED_PREFIX)]:
            snapshot = entry.name[len(_DISCARDED_PREFIX) :]
            source = ddir / "snapshots" / snapshot
            if not disk.exists() and _NAME_RE.match(snapshot) and source.is_dir():
                log.warning("finishing the interrupted revert of %s to %s", ddir.name, snapshot)
                _empty_dir(entry)
                try:
                    self._copy_into_place(ddir, source)
                except (OSError, OperationFailed, OperationTimedOut) as exc:  # the marker stays
                    log.warning("the revert of %s to %s cannot be finished: %s", ddir.name, snapshot, exc)
                    continue
            self._discard(entry)

    def _empty_trash(self, ddir: Path) -> bool:
        """Delete the domain's discarded disks now; True if there was any."""
        found = False
        for entry in ddir.glob(f"{_TRASH_PREFIX}*"):
            found = True
            remove_tree(entry)
        return found

    def _copy_in_flight(self, path: Path) -> bool:
        return str(path) in _in_flight

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f"{_TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, trash)
        remove_tree(trash)

    # ---- state

    def state(self, domain: str) -> DomainState:
        ddir = self._domain_dir(domain)
        try:
            settings = json.loads((ddir / "agent.json").read_text())
        except FileNotFoundError:
            return DomainState.MISSING
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"unreadable settings for {domain!r}: {exc}", host=self.host) from exc
        # The agent once it answered; until then, its sandbox.
        pid, start = settings.get("pid"), settings.get("start_time")
        if not pid:
            pid, start = settings.get("sandbox_pid"), settings.get("sandbox_start")
        if pid and start is not None and _alive(int(pid), int(start)):
            return DomainState.RUNNING
        return DomainState.OFF

    def agent_address(self, domain: str) -> AgentAddress | None:
        settings = self._read_settings(self._existing(domain))
        port = settings.get("port")
        if not port:
            return None
        return AgentAddress(url=f"http://127.0.0.1:{port}", token=settings["token"])

    # ---- power

    def power_on(self, domain: str) -> None:
        ddir = self._existing(domain)
        with self._locked(ddir):
            if self.state(domain) != DomainState.RUNNING:
                self._start_agent(ddir)
        self._prepare_boot_later(ddir)

    def power_off(self, domain: str) -> None:
        ddir = self._existing(domain)
        with self._locked(ddir):
            self._stop_agent(ddir)
            self._discard_spare_boot(ddir)

    def _start_agent(self, ddir: Path, *, strays_stopped: bool = False) -> None:
        """Start the agent as the only process of a new sandbox (sandbox.py) and wait until it answers.

        Records the sandbox as soon as it exists (a crash must not leave it unknown), then the agent's
        own pid: the domain runs while the agent does. `strays_stopped`: the caller has just killed
        the domain's unrecorded processes under the same lock.

        The sandbox is this backend's spare boot of the domain when it has a live one (started after
        the last boot, its agent loaded: `spare_boots`), else a new one. A spare that fails is
        dropped and a new sandbox started: a spare never makes a boot fail that a new one passes."""
        if not self.agent_script.is_file():
            raise OperationFailed(
                f"agent server {self.agent_script} not found", host=self.host, domain=ddir.name
            )
        problem = sandbox.isolation_problem()
        if problem is not None:
            raise OperationFailed(problem, host=self.host, domain=ddir.name)
        if not strays_stopped:
            self._stop_strays(ddir)
        if not (ddir / "disk").exists():
            interrupted = [p.name[len(_DISCARDED_PREFIX) :] for p in ddir.glob(f"{_DISCARDED_PREFIX}*")]
            if interrupted:
                raise OperationFailed(
                    f"domain {ddir.name!r} has no disk: its revert to {interrupted[0]!r} could not be "
                    "finished; revert it again",
                    host=self.host,
                    domain=ddir.name,
                )
            (ddir / "disk").mkdir()
        spare = self._take_spare_boot(ddir)
        if spare is not None:
            try:
                self._boot(ddir, spare)
                return
            except OperationFailed as exc:
                log.warning("the spare boot of %s failed (%s): booting a new sandbox", ddir.name, exc)
        self._boot(ddir, self._launch(ddir, spare=False))

    def _launch(self, ddir: Path, *, spare: bool) -> _Sandbox:
        """Start a sandbox running the agent (a spare: loaded, waiting for its go).

        The backend binds the agent's port and listens on it itself, then hands the socket to the
        sandbox: no other process can take the port in between, and the first request for the agent's
        boot id waits in the socket's queue until the agent serves it, so nobody polls.

        The launch is logged first, so that no crash can hide the sandbox from the stray check."""
        launch_log = self._log_launch(ddir)
        go_read, go = os.pipe() if spare else (-1, -1)
        try:
            with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
                port = listener.getsockname()[1]
                argv = sandbox.isolated_argv(
                    self.agent_script,
                    [
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--token-file",
                        str(ddir / "agent.token"),
                        "--workdir",
                        str(ddir / "disk"),
                    ],
                    socket_fd=listener.fileno(),
                    go_fd=go_read if spare else None,
                )
                with open(ddir / "agent.log", "ab") as logf:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                        pass_fds=(listener.fileno(), go_read) if spare else (listener.fileno(),),
                        cwd=ddir,
                    )
        except BaseException:
            if spare:
                os.close(go)
            raise
        finally:
            if spare:
                os.close(go_read)
        stat = _proc_stat(proc.pid)
        box = _Sandbox(proc, stat[3] if stat else None, port, go)
        box.launch_log = launch_log
        return box

    def _boot(self, ddir: Path, box: _Sandbox) -> None:
        """Record the sandbox, let it start its agent, wait for the agent's answer and record it; or
        kill it all and raise OperationFailed."""
        settings = self._read_settings(ddir)
        for key in ("pid", "start_time", "boot_id"):
            settings.pop(key, None)
        settings.update(
            port=box.port,
            sandbox_pid=box.proc.pid,
            sandbox_start=box.start,
            boots=int(settings.get("boots", 0)) + 1,
        )
        self._record_or_kill(ddir, settings)
        self._launch_known(ddir, box)
        box.go()
        boot_id, error = self._wait_for_agent(box.proc, box.port, settings["token"])
        agent = _sandboxed_agent(box.proc.pid) if boot_id else None
        if agent is not None:
            settings.update(boot_id=boot_id, pid=agent[0], start_time=agent[1])
            self._record_or_kill(ddir, settings)
            return
        if boot_id:
            error = "the agent answered but is not in its sandbox"
        self._stop_agent(ddir)
        raise OperationFailed(
            f"agent of {ddir.name!r} did not come up: {error} (see {ddir / 'agent.log'})",
            host=self.host,
            domain=ddir.name,
        )

    # ---- spare boots

    def _prepare_boot_later(self, ddir: Path) -> None:
        if self.spare_boots:
            self._later(self._prepare_spare_boot, ddir)

    def _prepare_spare_boot(self, ddir: Path) -> None:
        """Start the domain's next sandbox now, so that its next boot (a revert) only lets it go.

        Only for a running domain, one at a time. The spare holds nothing of any task: its agent is not
        started and its disk not opened before the boot that takes it."""
        try:
            with self._locked(ddir):
                spare = self._spare_boots.get(ddir)
                if spare is not None and spare.alive():
                    return
                self._discard_spare_boot(ddir)
                if self.state(ddir.name) != DomainState.RUNNING or sandbox.isolation_problem() is not None:
                    return
                self._spare_boots[ddir] = spare = self._launch(ddir, spare=True)
                self._launch_known(ddir, spare)
        except (OSError, OperationFailed) as exc:
            log.warning("no spare boot for %s: %s", ddir.name, exc)

    def _take_spare_boot(self, ddir: Path) -> _Sandbox | None:
        """This backend's live spare boot of the domain, taken out of the spares; None if there is none."""
        spare = self._spare_boots.pop(ddir, None)
        if spare is not None and not spare.alive():
            spare.discard()
            return None
        return spare

    def _discard_spare_boot(self, ddir: Path) -> None:
        spare = self._spare_boots.pop(ddir, None)
        if spare is not None:
            spare.discard()

    def _record_or_kill(self, ddir: Path, settings: Mapping[str, Any]) -> None:
        """Record a started agent; one that cannot be recorded is killed at once, not left running."""
        try:
            self._write_settings(ddir, settings)
        except OSError as exc:
            self._launches_known.pop(ddir, None)  # the sandbox just started is one of them
            self._stop_strays(ddir)
            raise OperationFailed(
                f"cannot record the agent of {ddir.name!r}: {exc}", host=self.host, domain=ddir.name
            ) from exc

    def _wait_for_agent(self, proc: subprocess.Popen[bytes], port: int, token: str) -> tuple[str, str]:
        """GET /v1/info until it answers: returns (boot_id, "") or ("", why it did not). The request
        waits in the listening socket's queue until the agent serves it; another is sent only when the
        agent answered badly or died (its socket closed)."""
        deadline = time.monotonic() + self.boot_timeout
        error = "no answer"
        while True:
            if proc.poll() is not None:
                return "", f"agent exited with status {proc.returncode}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "", f"no answer within {self.boot_timeout:g} s ({error})"
            # The agent's own wire format over one blocking connection (testlab/agent/bulk.py):
            # http.client cost the revert's thread more than the rest of the boot's wait.
            exchange = BulkExchange(
                "127.0.0.1",
                port,
                f"127.0.0.1:{port}",
                None,
                f"Bearer {token}",
                connect_timeout=remaining,
                io_timeout=remaining,
                touch=lambda: None,
            )
            try:
                head = exchange.get("/v1/info")
                body = exchange.read_body()
                if head.status == 200:
                    return str(json.loads(body).get("boot_id", "")) or "unknown", ""
                error = f"HTTP {head.status}"
            except (TransportFailure, AgentError, ValueError) as exc:
                error = str(exc) or type(exc).__name__
            finally:
                exchange.close()
            time.sleep(0.005)

    def _stop_agent(self, ddir: Path) -> None:
        """Kill the domain's processes, then drop their record. A record that cannot be written (a task
        filled the filesystem) is left: pids are checked with their start time, so it reads as off."""
        settings = self._kill_domain(ddir)
        if any(settings.get(key) for key in _RUN_KEYS):
            for key in _RUN_KEYS:
                settings.pop(key, None)
            try:
                self._write_settings(ddir, settings)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                log.warning("%s is off; its record is stale until there is room again (%s)", ddir.name, exc)

    def _kill_domain(self, ddir: Path) -> dict[str, Any]:
        """Kill every process of the domain, writing nothing; returns its settings.

        The recorded agent (stopped first: it cannot start anything more), its sandbox's init and the
        sandbox's `unshare`: killing the init makes the kernel kill everything else in the namespace,
        and the init is gone only once the namespace is empty, so nothing needs listing. A sandbox
        whose agent is not known (killed while booting) goes with everything below it. Then strays."""
        settings = self._read_settings(ddir)
        sandbox_pid = _recorded(settings, "sandbox_pid", "sandbox_start")
        agent = _recorded(settings, "pid", "start_time")
        init = None
        victims: list[int] = []
        if agent is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent, signal.SIGSTOP)
            init = _init_of(agent)
            victims += [agent] if init is None else [agent, init]
        if sandbox_pid is not None and sandbox_pid not in victims:
            victims.append(sandbox_pid)
            if init is None:
                victims += _descendants(sandbox_pid)
        if victims:
            self._kill_all(ddir, victims)
        self._stop_strays(ddir)
        return settings

    def _log_launch(self, ddir: Path) -> tuple[int, int]:
        """Add a line to the domain's launch log; returns its size before and after."""
        path = ddir / _LAUNCH_LOG
        before = _file_size(path)
        with open(path, "ab") as f:
            f.write(b"%d\n" % os.getpid())
        return before, _file_size(path)

    def _launch_known(self, ddir: Path, box: _Sandbox) -> None:
        """The sandbox this backend launched is recorded, or is its spare: if every sandbox before it
        was known, every one still is."""
        if box.launch_log is not None and self._launches_known.get(ddir) == box.launch_log[0]:
            self._launches_known[ddir] = box.launch_log[1]
        box.launch_log = None

    def _trim_launch_log(self, ddir: Path) -> None:
        """Under the domain's lock (no launch can be under way): a long log starts again empty."""
        path = ddir / _LAUNCH_LOG
        if _file_size(path) > _LAUNCH_LOG_LIMIT:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(path, 0)
            self._launches_known.pop(ddir, None)

    def _stop_strays(self, ddir: Path) -> None:
        """Kill sandboxes of this domain that no record points to (their starter was killed mid-way, or
        they are another process's spare boot), sparing this backend's own spare.

        Finding them means reading every process's command line, so it is done only when the domain's
        launch log holds a launch this backend does not know of: the first check of the domain by this
        backend, another process's launch, or a launch of its own that it could not record. Every
        launch is logged before the sandbox exists (`_launch`)."""
        size = _file_size(ddir / _LAUNCH_LOG)
        if self._launches_known.get(ddir) == size:
            return
        strays = _processes_using(str(ddir / "agent.token"))
        spare = self._spare_boots.get(ddir)
        if spare is not None and strays:
            strays = [pid for pid in strays if not spare.holds(pid)]
        if strays:
            log.warning("killing %d unrecorded agent process(es) of %s", len(strays), ddir.name)
            self._kill_all(ddir, [p for pid in strays for p in (pid, *_descendants(pid))])
        self._launches_known[ddir] = size

    def _kill_all(self, ddir: Path, pids: list[int]) -> None:
        survivors = _kill_and_wait(pids)
        if survivors:
            raise OperationFailed(
                f"processes {', '.join(map(str, survivors))} of {ddir.name!r} survived SIGKILL",
                host=self.host,
                domain=ddir.name,
            )

    def break_agent(self, domain: str, mode: str = "kill") -> None:
        """Fault injection: kill the domain ("kill": it reads as off) or freeze its agent ("stop": the
        domain reads as running but its agent never answers), leaving the records untouched."""
        ddir = self._existing(domain)
        settings = self._read_settings(ddir)
        pid, start = settings.get("pid"), settings.get("start_time")
        if not (pid and start is not None and _alive(int(pid), int(start))):
            return
        if mode == "stop":
            os.kill(int(pid), signal.SIGSTOP)
        else:
            self._kill_domain(ddir)

    # ---- snapshots

    def list_snapshots(self, domain: str) -> list[str]:
        ddir = self._existing(domain)
        snaps = ddir / "snapshots"
        if not snaps.is_dir():
            return []
        return sorted(p.name for p in snaps.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def create_snapshot(self, domain: str, name: str) -> None:
        ddir = self._existing(domain)
        target = self._snapshot_dir(ddir, domain, name)
        with self._locked(ddir):
            if target.exists():
                raise OperationFailed(f"domain {domain!r} already has a snapshot {name!r}", host=self.host)
            self._snapshot_disk(ddir, target)

    def _snapshot_disk(self, ddir: Path, target: Path) -> None:
        target.parent.mkdir(exist_ok=True)
        partial = target.parent / f".partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.copy_method = copy_tree(ddir / "disk", partial, self._deadline("create_snapshot"))
            os.rename(partial, target)
        finally:
            if partial.exists():
                remove_tree(partial)

    def ensure_domain(self, domain: str, snapshot: str) -> None:
        """Create what is missing: the domain (empty disk) and the snapshot (of the current disk)."""
        ddir = self._domain_dir(domain)
        self._snapshot_dir(ddir, domain, snapshot)  # validate before touching anything
        if not (ddir / "agent.json").is_file():
            ddir.mkdir(parents=True, exist_ok=True)
            with self._locked(ddir):
                if not (ddir / "agent.json").is_file():
                    (ddir / "disk").mkdir(exist_ok=True)
                    (ddir / "snapshots").mkdir(exist_ok=True)
                    token = secrets.token_urlsafe(24)
                    fd = os.open(ddir / "agent.token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(token + "\n")
                    self._write_settings(ddir, {"token": token, "boots": 0})
        if snapshot not in self.list_snapshots(domain):
            with contextlib.suppress(OperationFailed):
                self.create_snapshot(domain, snapshot)
            if snapshot not in self.list_snapshots(domain):
                raise OperationFailed(f"could not create snapshot {snapshot!r} of {domain!r}", host=self.host)

    # ---- revert

    def revert(self, domain: str, snapshot: str) -> None:
        """Power off, throw the old disk away, put a copy of the snapshot in its place, power on.

        Nothing is written before the old disk is gone: a task may have filled the filesystem, and the
        revert is what must bring the VM back. A spare copy is swapped in with the old disk in one
        atomic exchange; without one, the old disk is emptied first (the copy needs its room) under a
        name that says which snapshot is coming, so that the next operation finishes the revert if
        this process is killed in between.
        """
        ddir = self._existing(domain)
        source = self._snapshot_dir(ddir, domain, snapshot)
        with self._locked(ddir):
            if not source.is_dir():
                raise SnapshotMissing(
                    f"domain {domain!r} has no snapshot {snapshot!r}", host=self.host, domain=domain
                )
            self._kill_domain(ddir)
            swapped, old = self._swap_in_spare(ddir, snapshot)
            if not swapped:
                self._discard_then_copy(ddir, source, snapshot)
            elif old is not None and _free_bytes(ddir) < LOW_SPACE:
                remove_tree(old)
            self._start_agent(ddir, strays_stopped=True)
        self._prepare_boot_later(ddir)
        if old is not None:
            self._later(remove_tree, old)
        if self.spare_copies:
            self._later(self._prepare_spare, ddir, source, snapshot)

    def _swap_in_spare(self, ddir: Path, snapshot: str) -> tuple[bool, Path | None]:
        """Put the spare copy of `snapshot` at disk/ atomically, if there is one: (swapped, the old
        disk's new name)."""
        spare = ddir / f"{_SPARE_PREFIX}{snapshot}"
        fresh = ddir / f"{_RESTORE_PREFIX}{_owner_tag()}-{secrets.token_hex(4)}"
        try:
            os.rename(spare, fresh)
        except FileNotFoundError:
            return False, None
        disk = ddir / "disk"
        trash = ddir / f"{_TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        if not disk.exists():
            os.rename(fresh, disk)
            return True, None
        if exchange_paths(fresh, disk):
            os.rename(fresh, trash)
            return True, trash
        # No atomic exchange: the ".ready" name marks a complete copy that recovery moves into place.
        ready = fresh.with_name(fresh.name + ".ready")
        os.rename(fresh, ready)
        os.rename(disk, trash)
        os.rename(ready, disk)
        return True, trash

    def _discard_then_copy(self, ddir: Path, source: Path, snapshot: str) -> None:
        disk = ddir / "disk"
        discarded = ddir / f"{_DISCARDED_PREFIX}{snapshot}"
        if disk.exists():
            os.rename(disk, discarded)  # a rename needs no room
            _empty_dir(discarded)
        else:
            discarded.mkdir(exist_ok=True)
        self._copy_into_place(ddir, source)
        discarded.rmdir()

    def _copy_into_place(self, ddir: Path, source: Path) -> None:
        """Copy `source` next to the missing disk/ and rename it into place: never a partial disk."""
        holder = self._copy_holder(ddir)
        try:
            self.copy_method = copy_tree(source, holder / "tree", self._deadline("revert"))
            os.rename(holder / "tree", ddir / "disk")
            os.rmdir(holder)
        except BaseException:
            remove_tree(holder)
            raise
        finally:
            _in_flight.discard(str(holder))

    @staticmethod
    def _copy_holder(ddir: Path) -> Path:
        """A new directory, named for its owner, that a copy in progress goes into. A copy is made
        inside it rather than at its name: if recovery deletes the holder of a killed process (whose
        `cp` may have been forked but not yet started, so no scan finds it), a late `cp` fails for want
        of its parent instead of creating the copy again."""
        holder = ddir / f"{_RESTORE_PREFIX}{_owner_tag()}-{secrets.token_hex(4)}"
        holder.mkdir()
        _in_flight.add(str(holder))
        return holder

    def _prepare_spare(self, ddir: Path, source: Path, snapshot: str) -> None:
        spare = ddir / f"{_SPARE_PREFIX}{snapshot}"
        if spare.exists() or not source.is_dir():
            return
        if _free_bytes(ddir) < LOW_SPACE:  # the spare must not take the room the next task needs
            log.info("no spare copy of %s/%s: the filesystem is nearly full", ddir.name, snapshot)
            return
        try:
            partial = self._copy_holder(ddir)
        except OSError as exc:
            log.warning("preparing a spare copy of %s/%s failed: %s", ddir.name, snapshot, exc)
            return
        try:
            copy_tree(source, partial / "tree", self._deadline("revert"))
            os.rename(partial / "tree", spare)
            os.rmdir(partial)
        except (OSError, OperationFailed, OperationTimedOut) as exc:
            log.warning("preparing a spare copy of %s/%s failed: %s", ddir.name, snapshot, exc)
        finally:
            _in_flight.discard(str(partial))
            if partial.exists():
                remove_tree(partial)

    def _deadline(self, op: str) -> float:
        """A copy never runs longer than the operation it is part of may take."""
        return self.timeouts.get(op, DEFAULT_TIMEOUTS[op])

    def _later(self, fn: Any, *args: Any) -> None:
        try:
            self._background.submit(fn, *args)
        except RuntimeError:  # closed: do it now
            fn(*args)

    def wait_idle(self) -> None:
        """Wait for background work (spare copies, deletions): benchmarks and tests want quiet disks."""
        self._background.submit(lambda: None).result()

    # ---- host

    def health(self) -> HostHealth:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError as exc:
            return HostHealth(reachable=True, free_disk_bytes=None, detail=str(exc))
        return HostHealth(reachable=True, free_disk_bytes=free, detail=str(self.root))

    def domains(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "agent.json").is_file())

    def power_cycle(self) -> None:
        """The host's `power_cycle` command when the lab file gives one; otherwise like pulling the
        plug of this machine: every running domain is powered off and on again."""
        if "power_cycle" in self.runner:
            super().power_cycle()
            return
        for domain in self.domains():
            if self.state(domain) == DomainState.RUNNING:
                self.power_off(domain)
                self.power_on(domain)

    def close(self) -> None:
        self.wait_idle()
        for ddir in list(self._spare_boots):
            self._discard_spare_boot(ddir)


# Copies being written by this process; recovery must not delete them under the writer's feet.
_in_flight: set[str] = set()


def remove_tree(path: Path) -> None:
    """Delete a tree whatever a task did to its modes: a directory it made read-only must not keep a
    discarded disk's space taken for good."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path) or os.path.islink(path):
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):  # top down: a directory is opened before it is entered
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _empty_dir(path: Path) -> None:
    """Delete what a directory holds, keeping the directory itself (its name is a record)."""
    for entry in list(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _owner_tag() -> str:
    """This process as a copy's owner: its pid and start time (pids are reused, start times not)."""
    pid = os.getpid()
    st = _proc_stat(pid)
    return f"{pid}.{st[3] if st else 0}"


def _owner_alive(tag: str) -> bool:
    """Whether the process a copy's name records is still the one running under that pid."""
    pid, _, start = tag.partition(".")
    if not pid.isdigit():
        return False
    if not start.isdigit():  # a name from before start times were recorded
        return _pid_exists(int(pid))
    return _alive(int(pid), int(start))


def _pid_exists(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")
