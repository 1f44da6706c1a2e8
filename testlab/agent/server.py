#!/usr/bin/env python3
"""The testlab guest agent: one file, Python 3.8+ standard library only.

It is copied alone into VM images and onto physical test hosts, so it imports nothing from testlab and
nothing outside the standard library. The engine drives it over HTTP/1.1 (JSON bodies, bearer token):
upload files, run commands detached from any connection, follow their output, fetch files back.

Commands outlive the agent: each one runs under a small supervisor process (forked from the agent, in a
session of its own) that waits for the command and writes its exit status to a file. The agent only reads
those files, so a restarted agent still knows every command that ran or finished while it was down.

Run ``python3 server.py --help`` for the options; docs/agent.md in the testlab tree is the protocol
reference.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import glob
import hashlib
import hmac
import io
import json
import math
import os
import platform
import queue
import re
import select
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = "1.0"
STATE_DIR = ".agent"
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_JSON_BODY = 1 << 20
MAX_OUTPUT_CHUNK = 16 << 20
DEFAULT_OUTPUT_CHUNK = 4 << 20
MAX_WAIT = 300.0
MAX_OFFSET = (1 << 63) - 1  # the largest file offset the OS takes
IO_CHUNK = 1 << 20
RECV_CHUNK = 1 << 20
RECV_BUFFERS = 4
UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
STAGED_TTL = 600.0
COMMITTED_MEMORY = 256
TRASH_MIN_SIZE = 8 << 20
KILL_GRACE = 2.0
DEFAULT_ARCHIVE_ENTRIES = 100_000
DEFAULT_ARCHIVE_SECONDS = 20.0  # below the client's usual 30 s request timeout, so it gets the answer
EXIT_RESERVE = 4096  # bytes set aside per command for its exit record; one record takes about 80
FINISHED = ("exited", "killed", "timeout")


class RequestError(Exception):
    """A refusal that becomes a 4xx answer with a JSON ``{"error": ..., "code": ...}`` body."""

    def __init__(self, status, message, code="bad_request"):
        Exception.__init__(self, message)
        self.status = status
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------------- files


def write_json_atomic(path, obj):
    """Readers (possibly another agent process) must never see half a state file.

    No fsync: the files must survive the agent's death, which the page cache ensures; after a reboot
    every running command is lost anyway.
    """
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write_all(fd, memoryview(json.dumps(obj).encode()))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reserve_exit_record(cmd_dir):
    """Sets aside the space of a command's exit record while there is space.

    A task that fills the disk would otherwise leave its supervisor unable to write how it ended,
    and the command would look lost (an infrastructure error) instead of exited with its status.
    The reserve is real blocks (written, not a sparse file) that write_exit_record overwrites in
    place and renames, which needs no new space on file systems that overwrite in place.
    """
    fd = os.open(os.path.join(cmd_dir, "exit.reserve"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, memoryview(b" " * EXIT_RESERVE))
    finally:
        os.close(fd)


def write_exit_record(cmd_dir, obj):
    """Writes exit.json into the command's reserve (JSON allows the trailing spaces that pad it).

    Falls back to an ordinary write when there is no reserve (a command dir of an older agent)."""
    data = json.dumps(obj).encode()
    reserve = os.path.join(cmd_dir, "exit.reserve")
    if len(data) <= EXIT_RESERVE:
        try:
            fd = os.open(reserve, os.O_WRONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                os.pwrite(fd, data + b" " * (EXIT_RESERVE - len(data)), 0)
            finally:
                os.close(fd)
            os.replace(reserve, os.path.join(cmd_dir, "exit.json"))
            return
    write_json_atomic(os.path.join(cmd_dir, "exit.json"), obj)


def read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def system_boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def proc_stat(pid):
    """(state letter, start time in ticks) from /proc, or None where /proc is missing or pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return fields[0], fields[19]


def free_disk_bytes(path):
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return shutil.disk_usage(path).free
    return st.f_bavail * st.f_frsize


class Workspace:
    """Confines every client-given path to the work dir, after resolving symlinks."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.state_dir = os.path.join(self.root, STATE_DIR)

    def _check_relative(self, rel, what="path"):
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise RequestError(400, f"{what} must be a non-empty string", "bad_path")
        if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
            raise RequestError(
                403, f"{what} {rel!r} is absolute; paths are relative to the work dir", "path_escape"
            )
        parts = re.split(r"[/\\]", rel)
        if ".." in parts:
            raise RequestError(403, f"{what} {rel!r} contains '..'", "path_escape")
        return parts

    def inside(self, real):
        return real == self.root or real.startswith(self.root + os.sep)

    def _check_real(self, rel, real, allow_root=False, what="path"):
        if not self.inside(real):
            raise RequestError(403, f"{what} {rel!r} leads outside the work dir (symlink)", "path_escape")
        if real == self.state_dir or real.startswith(self.state_dir + os.sep):
            raise RequestError(403, f"{what} {rel!r} is inside the agent's state dir", "path_escape")
        if real == self.root and not allow_root:
            raise RequestError(403, f"{what} {rel!r} is the work dir itself", "path_escape")
        return real

    def resolve(self, rel, allow_root=False, what="path"):
        """The real absolute path for ``rel``, following symlinks, refused if it leaves the work dir."""
        self._check_relative(rel, what)
        return self._check_real(rel, os.path.realpath(os.path.join(self.root, rel)), allow_root, what)

    def resolve_entry(self, rel):
        """Parent resolved, last component kept as is: deleting a symlink removes the link, not its target."""
        parts = [p for p in self._check_relative(rel) if p not in ("", ".")]
        if not parts:
            raise RequestError(403, f"path {rel!r} is the work dir itself", "path_escape")
        parent = os.path.realpath(os.path.join(self.root, *parts[:-1]))
        if not self.inside(parent):
            raise RequestError(403, f"path {rel!r} leads outside the work dir (symlink)", "path_escape")
        entry = os.path.join(parent, parts[-1])
        if entry == self.state_dir or parent.startswith(self.state_dir):
            raise RequestError(403, f"path {rel!r} is inside the agent's state dir", "path_escape")
        return entry

    def find(self, pattern, budget):
        """Matches of a path or glob as (path to archive, name in the archive).

        Symbolic links are archived as links and never followed, so no link (or loop of links) can
        make the listing leave the tree or go on forever. A path named without wildcards is resolved
        as before: refused if it leads outside the work dir, sent as the file a link points to.
        """
        self._check_relative(pattern, "pattern")
        if glob.has_magic(pattern):
            names = (
                (path, os.path.relpath(path, self.root))
                for path in _glob_no_follow(self.root, pattern, budget)
            )
            return sorted(
                (path, name.replace(os.sep, "/"))
                for path, name in names
                if name != STATE_DIR and not name.startswith(STATE_DIR + os.sep)
            )
        candidate = os.path.join(self.root, pattern)
        if not os.path.lexists(candidate):
            return []
        real = os.path.realpath(candidate)
        name = os.path.relpath(candidate, self.root)
        if not os.path.exists(real) or name == STATE_DIR or name.startswith(STATE_DIR + os.sep):
            return []
        if not self.inside(real):
            raise RequestError(
                403, f"artifact {name!r} leads outside the work dir (symlink)", "artifacts_outside"
            )
        self._check_real(name, real, allow_root=True)
        keep_link = os.path.islink(candidate) and os.path.isdir(real)
        return [(candidate if keep_link else real, name.replace(os.sep, "/"))]


def _glob_no_follow(root, pattern, budget):
    """Paths under `root` matching `pattern` (`*`, `?`, `[...]`, `**` for any depth), like glob's
    recursive mode, hidden names included only by segments that start with '.', but descending only
    into real directories: glob follows symlinked directories, and a link loop made it enumerate
    forever."""
    segments = [part for part in pattern.split("/") if part not in ("", ".")]
    current = [root]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        found = []
        for directory in current:
            if segment == "**":
                found += _descendants(directory, budget, files=last)
            elif glob.has_magic(segment):
                for entry in _scan(directory, budget):
                    if entry.name.startswith(".") and not segment.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(entry.name, segment) and (
                        last or entry.is_dir(follow_symlinks=False)
                    ):
                        found.append(entry.path)
            else:
                path = os.path.join(directory, segment)
                if os.path.lexists(path) if last else (os.path.isdir(path) and not os.path.islink(path)):
                    found.append(path)
        current = found
    return current


def _descendants(directory, budget, files):
    """`directory` and every real directory below it (with `files`, every other entry too); hidden
    names left out, as glob does."""
    result = [directory]
    pending = [directory]
    while pending:
        for entry in _scan(pending.pop(), budget):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                result.append(entry.path)
                pending.append(entry.path)
            elif files:
                result.append(entry.path)
    return result


def _scan(directory, budget):
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                budget.tick()
                yield entry
    except OSError:
        return  # vanished or unreadable meanwhile: nothing to match there


class ArchiveBudget:
    """What one archive may hold and how long listing it may take (--max-archive-entries,
    --max-archive-bytes, --archive-timeout). Going over refuses the request with a 4xx whose code
    starts with ``artifacts_``, so the engine fails the task that made such artifacts instead of
    taking the VM for broken."""

    def __init__(self, pattern, max_entries, max_bytes, seconds):
        self.pattern = pattern
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.entries = 0
        self.bytes = 0

    def tick(self):
        if time.monotonic() > self.deadline:
            raise RequestError(
                422,
                f"listing the artifacts {self.pattern!r} took more than {self.seconds:g} s",
                "artifacts_timeout",
            )

    def add(self, size):
        self.entries += 1
        self.bytes += size
        if self.entries > self.max_entries:
            raise RequestError(
                413,
                f"artifacts {self.pattern!r}: more than {self.max_entries} files and directories",
                "artifacts_too_many",
            )
        if self.bytes > self.max_bytes:
            raise RequestError(
                413,
                f"artifacts {self.pattern!r}: more than {self.max_bytes} bytes",
                "artifacts_too_large",
            )


class UploadStaging:
    """Uploads received but not yet committed, kept in the state dir where no client path can reach them.

    A client sends the body first and its sha256 afterwards (it hashes while sending instead of reading
    the file twice), so the bytes wait here until a commit names the digest. A retried commit gets the
    answer of the first one; staged files nobody commits are deleted after ``STAGED_TTL`` seconds, and
    all of them when the agent starts (it has forgotten who they belonged to).
    """

    def __init__(self, workspace):
        self.dir = os.path.join(workspace.state_dir, "uploads")
        self.trash = os.path.join(workspace.state_dir, "trash")
        for d in (self.dir, self.trash):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d, exist_ok=True)
        self._lock = threading.Lock()
        self._staged = {}
        self._committed = {}

    def path(self, upload_id):
        if not isinstance(upload_id, str) or not UPLOAD_ID_RE.match(upload_id):
            raise RequestError(400, f"upload id must match {UPLOAD_ID_RE.pattern}", "bad_upload_id")
        return os.path.join(self.dir, upload_id)

    def add(self, upload_id, entry):
        now = time.monotonic()
        with self._lock:
            stale = [k for k, v in self._staged.items() if now - v["at"] > STAGED_TTL]
            old = [self._staged.pop(k) for k in stale]
            previous = self._staged.pop(upload_id, None)
            if previous is not None and previous["tmp"] != entry["tmp"]:
                old.append(previous)
            entry["at"] = now
            self._staged[upload_id] = entry
        for gone in old:
            with contextlib.suppress(OSError):
                os.unlink(gone["tmp"])

    def commit(self, upload_id, expected):
        """Moves a staged upload to its target once its digest is confirmed; idempotent per upload id."""
        self.path(upload_id)
        with self._lock:
            done = self._committed.get(upload_id)
            if done is not None:
                if done["sha256"] != expected:
                    raise RequestError(422, "upload was committed with another sha256", "checksum")
                return done
            entry = self._staged.pop(upload_id, None)
            if entry is None:
                raise RequestError(404, f"no staged upload {upload_id!r}; send it again", "unknown_upload")
            try:
                result = self._finish(entry, expected)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(entry["tmp"])
                raise
            self._committed[upload_id] = result
            while len(self._committed) > COMMITTED_MEMORY:
                self._committed.pop(next(iter(self._committed)))
            return result

    def _finish(self, entry, expected):
        if entry["sha256"] != expected:
            raise RequestError(
                422, f"sha256 mismatch: got {entry['sha256']}, expected {expected}", "checksum"
            )
        target = entry["target"]
        if os.path.isdir(target):
            raise RequestError(409, f"path {entry['path']!r} is a directory", "is_directory")
        try:
            os.chmod(entry["tmp"], entry["mode"])
        except FileNotFoundError:
            raise RequestError(404, "staged upload vanished; send it again", "unknown_upload") from None
        doomed = self._keep_for_later(target)
        try:
            os.replace(entry["tmp"], target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise RequestError(409, f"cannot store {entry['path']!r}: {exc.strerror}") from None
            # The target lies on another file system (a mount inside the work dir): copy next to it first.
            parent = os.path.dirname(target)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(target) + ".part-")
            os.close(fd)
            try:
                shutil.copyfile(entry["tmp"], tmp)
                os.chmod(tmp, entry["mode"])
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            os.unlink(entry["tmp"])
        finally:
            if doomed is not None:
                threading.Thread(target=_unlink_quietly, args=(doomed,), daemon=True).start()
        return {"path": entry["path"], "size": entry["size"], "sha256": entry["sha256"]}

    def _keep_for_later(self, target):
        """Links a big file about to be replaced into the trash, so the rename does not free its pages.

        Dropping the last link of a file frees its whole page cache inside the rename, tens of ms for
        100 MB; with a second link the client gets its answer first and a thread frees them after.
        """
        try:
            st = os.lstat(target)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size < TRASH_MIN_SIZE:
            return None
        doomed = os.path.join(self.trash, uuid.uuid4().hex)
        try:
            os.link(target, doomed)
        except OSError:
            return None
        return doomed


def _unlink_quietly(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


# ---------------------------------------------------------------------------------------- supervisor


def _close_inherited_fds():
    """The supervisor must not hold the agent's listening socket or client connections open."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _launch(spec, env, out_fd):
    """The command in a session (and so a process group) of its own, output appended to its log.

    subprocess uses vfork where it can, which matters: a plain fork of a big process costs milliseconds.
    """
    argv = spec["argv"] if spec.get("argv") else ["/bin/sh", "-c", spec["shell"]]
    try:
        return subprocess.Popen(
            argv,
            cwd=spec["cwd_abs"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=out_fd,
            start_new_session=True,
            restore_signals=True,
            close_fds=True,
        )
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            os.write(out_fd, f"testlab-agent: cannot run {argv[0]!r}: {exc}\n".encode())
        return None


def _kill_group(pgid, sig):
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _child_exit_waker():
    """A pipe that becomes readable on SIGCHLD, so the supervisor learns of the end at once."""
    try:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(w)
        return r
    except (OSError, ValueError):
        return None


def _supervise(cmd_dir, spec, env):
    """Waits for the command, enforces its timeout and kill requests, and records how it ended."""
    waker = _child_exit_waker()
    out_fd = os.open(os.path.join(cmd_dir, "output"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    proc = _launch(spec, env, out_fd)
    os.close(out_fd)
    if proc is None:
        write_exit_record(cmd_dir, {"state": "exited", "exit_code": 127, "ended": time.time()})
        return
    child = proc.pid  # the leader of the command's process group
    # For whoever cleans up after us; the command runs and is supervised without it (a full disk).
    with contextlib.suppress(OSError):
        write_json_atomic(os.path.join(cmd_dir, "pid.json"), {"pid": child, "pgid": child})
    kill_marker = os.path.join(cmd_dir, "kill")
    timeout = spec.get("timeout")
    deadline = time.monotonic() + timeout if timeout else None
    reason = None
    term_sent = None
    # proc.poll(), never a bare waitpid: Popen reaps its child by itself, e.g. when garbage collected.
    while proc.poll() is None:
        now = time.monotonic()
        if reason is None:
            if os.path.exists(kill_marker):
                reason = "killed"
            elif deadline is not None and now >= deadline:
                reason = "timeout"
            if reason is not None:
                term_sent = now
                _kill_group(child, signal.SIGTERM)
        elif now - term_sent >= KILL_GRACE:
            _kill_group(child, signal.SIGKILL)
        if waker is None:
            time.sleep(0.002)
        else:
            select.select([waker], [], [], 0.05)
            with contextlib.suppress(OSError):
                os.read(waker, 512)
    # The command's process group does not outlive its leader.
    _kill_group(child, signal.SIGKILL)
    write_exit_record(
        cmd_dir, {"state": reason or "exited", "exit_code": proc.returncode, "ended": time.time()}
    )


def spawn_supervisor(cmd_dir, spec, env):
    """Forks a detached supervisor: starting a fresh python3 would cost tens of ms on a small VM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        os.setsid()
        _close_inherited_fds()
        _supervise(cmd_dir, spec, env)
    except BaseException as exc:
        code = 1
        with contextlib.suppress(BaseException):
            with open(os.path.join(cmd_dir, "output"), "a") as f:
                f.write(f"testlab-agent: supervisor failed: {exc!r}\n")
            write_exit_record(cmd_dir, {"state": "exited", "exit_code": 127, "ended": time.time()})
    os._exit(code)


# ------------------------------------------------------------------------------------------ commands


class CommandStore:
    """Commands as directories under the state dir; the files in them are the only truth."""

    def __init__(self, workspace, boot_id):
        self.ws = workspace
        self.boot_id = boot_id
        self.root = os.path.join(workspace.state_dir, "commands")
        os.makedirs(self.root, exist_ok=True)
        self.commands_run = 0
        self._start_lock = threading.Lock()
        self._cond = threading.Condition()
        self._generation = 0
        self._children = {}
        self._sys_boot = system_boot_id()

    def _dir(self, cid):
        if not isinstance(cid, str) or not COMMAND_ID_RE.match(cid):
            raise RequestError(400, f"command id must match {COMMAND_ID_RE.pattern}", "bad_command_id")
        return os.path.join(self.root, cid)

    # ---- state

    def state(self, cid):
        d = self._dir(cid)
        spec = read_json(os.path.join(d, "spec.json"))
        if spec is None:
            raise RequestError(404, f"unknown command {cid!r}", "unknown_command")
        base = {"id": cid, "boot_id": spec["boot_id"], "started": spec["started"]}
        ended = read_json(os.path.join(d, "exit.json"))
        if ended is None and not self._alive(cid, d, spec):
            ended = read_json(os.path.join(d, "exit.json"))
            if ended is None:
                ended = {"state": "killed", "exit_code": None, "ended": time.time(), "lost": True}
                write_exit_record(d, ended)
        if ended is None:
            base.update(state="running", exit_code=None, ended=None)
        else:
            base.update(state=ended["state"], exit_code=ended["exit_code"], ended=ended["ended"])
            if ended.get("lost"):
                base["lost"] = True
        return base

    def _alive(self, cid, d, spec):
        with self._cond:
            if cid in self._children:
                return True
        sup = read_json(os.path.join(d, "supervisor.json"))
        if sup is None:
            return False
        if sup.get("sys_boot") and self._sys_boot and sup["sys_boot"] != self._sys_boot:
            return False  # the machine rebooted since: the supervisor died with it
        try:
            os.kill(sup["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # the pid now belongs to someone else's process
        st = proc_stat(sup["pid"])
        return not (
            st is not None and (st[0] == "Z" or sup.get("start_ticks") and st[1] != sup["start_ticks"])
        )

    def list(self):
        out = []
        for name in sorted(os.listdir(self.root)):
            if COMMAND_ID_RE.match(name):
                with contextlib.suppress(RequestError):
                    out.append(self.state(name))
        return out

    # ---- start

    def start(self, body):
        if not isinstance(body, dict):
            raise RequestError(400, "body must be a JSON object")
        cid = body.get("id")
        d = self._dir(cid)
        argv, shell = body.get("argv"), body.get("shell")
        if (argv is None) == (shell is None):
            raise RequestError(400, "give exactly one of 'argv' (list of strings) and 'shell' (string)")
        if argv is not None and (
            not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
        ):
            raise RequestError(400, "'argv' must be a non-empty list of strings")
        if shell is not None and not isinstance(shell, str):
            raise RequestError(400, "'shell' must be a string")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise RequestError(400, "'env' must be an object of strings")
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not _positive(timeout)
        ):
            raise RequestError(400, "'timeout' must be a positive, finite number of seconds")
        expected_boot = body.get("boot_id")
        if expected_boot is not None and not isinstance(expected_boot, str):
            raise RequestError(400, "'boot_id' must be a string")
        if expected_boot is not None and expected_boot != self.boot_id:
            raise RequestError(
                409, f"this agent's boot id is {self.boot_id}, not {expected_boot}", "boot_changed"
            )
        cwd = body.get("cwd", ".")
        cwd_abs = self.ws.resolve(cwd, allow_root=True, what="cwd")
        with self._start_lock:
            if os.path.exists(os.path.join(d, "spec.json")):
                return self.state(cid), False
            if os.path.exists(cwd_abs) and not os.path.isdir(cwd_abs):
                raise RequestError(400, f"cwd {cwd!r} is not a directory", "bad_cwd")
            spec = {
                "id": cid,
                "argv": argv,
                "shell": shell,
                "cwd": cwd,
                "cwd_abs": cwd_abs,
                "env": env,
                "timeout": timeout,
                "boot_id": self.boot_id,
                "started": time.time(),
            }
            try:
                os.makedirs(cwd_abs, exist_ok=True)
                os.makedirs(d, exist_ok=True)
                reserve_exit_record(d)
                write_json_atomic(os.path.join(d, "spec.json"), spec)  # from here on the id is known
            except OSError as exc:
                shutil.rmtree(d, ignore_errors=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise RequestError(
                        507, f"cannot start {cid!r}: no space left on the agent's disk", "disk_full"
                    ) from None
                raise
            full_env = dict(os.environ)
            full_env.update(env)
            pid = spawn_supervisor(d, spec, full_env)
            with self._cond:
                self._children[cid] = pid
            st = proc_stat(pid)
            # Tells a restarted agent whether the supervisor still runs; this agent knows its children.
            with contextlib.suppress(OSError):
                write_json_atomic(
                    os.path.join(d, "supervisor.json"),
                    {"pid": pid, "sys_boot": self._sys_boot, "start_ticks": st[1] if st else None},
                )
            self.commands_run += 1
            threading.Thread(target=self._reap, args=(cid, pid), daemon=True).start()
        return self.state(cid), True

    def _reap(self, cid, pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        with self._cond:
            self._children.pop(cid, None)
            self._generation += 1
            self._cond.notify_all()

    def _sleep_for_change(self, generation, seconds):
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation, timeout=seconds)

    # ---- waiting, output, kill

    def wait(self, cid, seconds):
        end = time.monotonic() + seconds
        while True:
            with self._cond:
                generation = self._generation
            st = self.state(cid)
            remaining = end - time.monotonic()
            if st["state"] in FINISHED or remaining <= 0:
                return st
            # Commands of an earlier agent instance are not our children: poll their files.
            self._sleep_for_change(generation, min(remaining, 0.25))

    def read_output(self, cid, offset, limit, seconds):
        path = os.path.join(self._dir(cid), "output")
        end = time.monotonic() + seconds
        while True:
            with self._cond:
                generation = self._generation
            st = self.state(cid)  # before the size: once finished, the file is complete
            try:
                size = os.path.getsize(path)
            except OSError:
                size = 0
            remaining = end - time.monotonic()
            if size > offset or st["state"] in FINISHED or remaining <= 0:
                break
            self._sleep_for_change(generation, min(remaining, 0.05))
        data = b""
        if size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        return data, max(size, offset + len(data)), st

    def kill(self, cid, seconds):
        st = self.state(cid)
        if st["state"] in FINISHED:
            return st
        fd = os.open(os.path.join(self._dir(cid), "kill"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        return self.wait(cid, seconds)


# ------------------------------------------------------------------------------------------------ http


def _positive(number):
    """Whether a JSON number is positive and finite: JSON gives inf for 1e400, and a float too large
    for an int (10**400) would overflow where it meets the clock."""
    try:
        value = float(number)
    except OverflowError:
        return False
    return math.isfinite(value) and value > 0


def _padded(n, block=tarfile.BLOCKSIZE):
    return -(-n // block) * block


def _write_all(fd, view):
    while view:
        view = view[os.write(fd, view) :]


def _write_zeros(wfile, n):
    zeros = bytes(min(n, IO_CHUNK))
    while n > 0:
        wfile.write(zeros[: min(n, len(zeros))])
        n -= len(zeros)


def _tar_members(matches, state_dir, budget):
    """(header bytes, file to send or None, data size) for each archive member, in order.

    The archive is built by hand rather than with tarfile's writer so that file data can go out with
    sendfile and the total length is known up front (Content-Length instead of chunks). Directories
    are walked without following links and without recursion (a task may nest thousands deep).
    """
    maker = tarfile.TarFile(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT)
    members = []
    done_dirs = set()
    for path, name in matches:
        if _ancestors(name) & done_dirs:
            continue  # already inside a matched directory ("out/**" matches "out" and all below)
        pending = [(path, name)]
        while pending:
            member_path, member_name = pending.pop()
            budget.tick()
            if os.path.abspath(member_path) == state_dir:
                continue
            try:
                info = maker.gettarinfo(member_path, arcname=member_name)
            except OSError:
                continue  # vanished meanwhile
            if info is None or _safe_tar_member(info) is None:
                continue
            if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                continue
            budget.add(info.size if info.isreg() else 0)
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            members.append((header, member_path, info.size) if info.isreg() else (header, None, 0))
            if info.isdir():
                done_dirs.add(member_name)
                children = sorted(entry.name for entry in _scan(member_path, budget))
                pending += [(os.path.join(member_path, c), f"{member_name}/{c}") for c in reversed(children)]
    return members


def _ancestors(name):
    parts = name.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def _safe_tar_member(info):
    """Links that would point outside the archive's tree are dropped rather than refused at extraction."""
    if info.issym():
        target = os.path.normpath(os.path.join(os.path.dirname(info.name), info.linkname))
        if os.path.isabs(info.linkname) or target == ".." or target.startswith(".." + os.sep):
            return None
    if info.name == STATE_DIR or info.name.startswith(STATE_DIR + "/"):
        return None
    return info


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testlab-agent/" + VERSION
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.idle_timeout
        BaseHTTPRequestHandler.setup(self)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ---- plumbing

    def _dispatch(self, method):
        self._consumed = False
        self._started_response = False
        try:
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise RequestError(411, "chunked request bodies are not supported; send Content-Length")
            try:
                self._length = int(length) if length is not None else 0
                if self._length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise RequestError(400, "bad Content-Length") from None
            if self._length == 0:
                self._consumed = True
            if not self._authorized():
                raise RequestError(401, "missing or wrong token", "unauthorized")
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self._route(method, url.path, query)
        except RequestError as exc:
            self._refuse(exc)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:
            self.close_connection = True
            sys.stderr.write(f"testlab-agent: internal error on {method} {self.path}: {exc!r}\n")
            if not self._started_response:
                with contextlib.suppress(OSError):
                    self._send_json(500, {"error": f"internal error: {exc}", "code": "internal"})

    def _authorized(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.server.token)

    def _refuse(self, exc):
        if self._started_response:
            self.close_connection = True
            return
        if not self._consumed:
            # Reading a moderate unread body lets the client see this answer instead of a broken pipe.
            if self._length <= 64 << 20:
                try:
                    self._discard(self._length)
                    self._consumed = True
                except OSError:
                    pass
            if not self._consumed:
                self.close_connection = True
        try:
            self._send_json(exc.status, {"error": exc.message, "code": exc.code})
        except OSError:
            self.close_connection = True

    def _discard(self, n):
        while n > 0:
            got = self.rfile.read(min(n, IO_CHUNK))
            if not got:
                raise ConnectionError("client went away")
            n -= len(got)

    def _send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self._send_bytes(status, body, "application/json")

    def _send_bytes(self, status, body, ctype, extra=None):
        self._started_response = True
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        lines.append("Server: " + self.server_version)
        lines.append("Content-Type: " + ctype)
        lines.append(f"Content-Length: {len(body)}")
        for k, v in (extra or {}).items():
            lines.append(f"{k}: {v}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.wfile.write(body)
        self.log_request(status, len(body))

    def _read_json(self):
        if self._length > MAX_JSON_BODY:
            raise RequestError(413, f"JSON body larger than {MAX_JSON_BODY} bytes", "too_large")
        raw = self.rfile.read(self._length)
        if len(raw) != self._length:
            raise ConnectionError("client went away")
        self._consumed = True
        try:
            return json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError as exc:
            raise RequestError(400, f"bad JSON body: {exc}", "bad_json") from None

    @staticmethod
    def _float(query, name, default, low=0.0, high=None, maximum=None):
        """A number from the query: at least `low`, cut to `high`, refused above `maximum`.

        float() takes "1e400", "inf" and "nan": they are refused here, not turned into an overflow
        (a 500) further on.
        """
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise RequestError(400, f"{name} must be a number") from None
        if not math.isfinite(value):
            raise RequestError(400, f"{name} must be a finite number, got {raw[:40]!r}")
        if value < low:
            raise RequestError(400, f"{name} must be >= {low}")
        if maximum is not None and value > maximum:
            raise RequestError(400, f"{name} must be at most {maximum}")
        return value if high is None else min(value, high)

    # ---- routes

    def _route(self, method, path, query):
        srv = self.server
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "v1":
            raise RequestError(404, f"no such endpoint {path}", "no_endpoint")
        parts = parts[1:]
        if parts == ["info"] and method == "GET":
            return self._send_json(200, srv.info())
        if parts == ["files"] and method == "PUT":
            return self._upload(query)
        if parts == ["files", "commit"] and method == "POST":
            expected = self._sha256_param(query)
            if expected is None:
                raise RequestError(400, "commit needs sha256")
            return self._send_json(200, srv.uploads.commit(query.get("upload", ""), expected))
        if parts == ["files"] and method == "DELETE":
            return self._delete(query)
        if parts == ["archive"] and method == "GET":
            return self._archive(query)
        if parts == ["commands"] and method == "GET":
            return self._send_json(200, {"commands": srv.commands.list()})
        if parts == ["commands"] and method == "POST":
            state, created = srv.commands.start(self._read_json())
            return self._send_json(201 if created else 200, state)
        if len(parts) == 2 and parts[0] == "commands" and method == "GET":
            wait = self._float(query, "wait", 0.0, high=MAX_WAIT)
            return self._send_json(200, srv.commands.wait(parts[1], wait))
        if len(parts) == 3 and parts[0] == "commands" and parts[2] == "output" and method == "GET":
            return self._output(parts[1], query)
        if len(parts) == 3 and parts[0] == "commands" and parts[2] == "kill" and method == "POST":
            wait = self._float(query, "wait", 10.0, high=MAX_WAIT)
            return self._send_json(200, srv.commands.kill(parts[1], wait))
        raise RequestError(404, f"no such endpoint {method} {path}", "no_endpoint")

    @staticmethod
    def _sha256_param(query):
        expected = (query.get("sha256") or "").lower() or None
        if expected is not None and not re.match(r"^[0-9a-f]{64}$", expected):
            raise RequestError(400, "sha256 must be 64 hex digits")
        return expected

    def _upload(self, query):
        """Stores a body atomically: checked against ``sha256`` now, or staged until a commit names it."""
        srv = self.server
        rel = query.get("path", "")
        if self.headers.get("Content-Length") is None:
            raise RequestError(411, "uploads need a Content-Length header")
        if self._length > srv.max_upload:
            raise RequestError(
                413,
                f"upload of {self._length} bytes exceeds the limit of {srv.max_upload}",
                "too_large",
            )
        mode = query.get("mode")
        if mode:
            try:
                mode = int(mode, 8)
            except ValueError:
                raise RequestError(400, "mode must be octal digits") from None
            if not 0 <= mode <= 0o7777:
                raise RequestError(400, "mode out of range")
        expected = self._sha256_param(query)
        upload_id = query.get("upload")
        staged = srv.uploads.path(upload_id) if upload_id is not None else None
        target = srv.workspace.resolve(rel)
        if os.path.isdir(target):
            raise RequestError(409, f"path {rel!r} is a directory", "is_directory")
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise RequestError(409, f"cannot create directory for {rel!r}: {exc.strerror}") from None
        if staged is not None:
            tmp = staged
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        else:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(target) + ".part-")
        try:
            try:
                actual = self._receive(fd, self._length)
            finally:
                os.close(fd)
            self._consumed = True
            if expected is not None and actual != expected:
                raise RequestError(422, f"sha256 mismatch: got {actual}, expected {expected}", "checksum")
            if staged is None:
                os.chmod(tmp, mode if mode else 0o644)
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        answer = {"path": rel, "size": self._length, "sha256": actual}
        if staged is not None:
            entry = dict(answer, tmp=tmp, target=target, mode=mode if mode else 0o644)
            srv.uploads.add(upload_id, entry)
            answer["upload"] = upload_id
        self._send_json(200, answer)

    def _receive(self, fd, length):
        """Body to file, hashed by a second thread so the hash overlaps receiving and writing.

        sha256 runs at about the speed of a loopback copy, so doing both in one thread would halve
        the upload rate; hashlib and the socket and file calls all release the GIL.
        """
        digest = hashlib.sha256()
        readinto = self.rfile.readinto
        if length <= RECV_CHUNK:
            buf = bytearray(length)
            n = readinto(buf) if length else 0
            if n != length:
                raise ConnectionError("client went away mid-upload")
            digest.update(buf)
            _write_all(fd, memoryview(buf))
            return digest.hexdigest()
        free = queue.Queue()
        full = queue.Queue()
        for _ in range(RECV_BUFFERS):
            free.put(bytearray(RECV_CHUNK))

        def hash_chunks():
            while True:
                item = full.get()
                if item is None:
                    return
                digest.update(item[1])
                free.put(item[0])

        hasher = threading.Thread(target=hash_chunks, name="upload-hash", daemon=True)
        hasher.start()
        remaining = length
        try:
            while remaining:
                buf = free.get()
                chunk = memoryview(buf)[: min(remaining, len(buf))]
                n = readinto(chunk)
                if n != len(chunk):
                    raise ConnectionError("client went away mid-upload")
                _write_all(fd, chunk)
                full.put((buf, chunk))
                remaining -= n
        finally:
            full.put(None)
            hasher.join()
        return digest.hexdigest()

    def _delete(self, query):
        rel = query.get("path", "")
        entry = self.server.workspace.resolve_entry(rel)
        if not os.path.lexists(entry):
            return self._send_json(200, {"path": rel, "deleted": False})
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.unlink(entry)
        self._send_json(200, {"path": rel, "deleted": True})

    def _archive(self, query):
        srv = self.server
        pattern = query.get("pattern", "")
        budget = ArchiveBudget(pattern, srv.max_archive_entries, srv.max_archive_bytes, srv.archive_seconds)
        matches = srv.workspace.find(pattern, budget)
        members = _tar_members(matches, srv.workspace.state_dir, budget)
        total = sum(len(header) + _padded(size) for header, _, size in members)
        total = _padded(total + 2 * tarfile.BLOCKSIZE, tarfile.RECORDSIZE)
        self._started_response = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(total))
        self.send_header("X-Match-Count", str(len(matches)))
        self.end_headers()
        sent = 0
        for header, path, size in members:
            self.wfile.write(header)
            sent += len(header)
            if path is not None and size > 0:
                copied = 0
                with contextlib.suppress(OSError), open(path, "rb") as f:
                    # sendfile: the kernel moves the bytes, which keeps downloads near raw socket speed.
                    copied = self.connection.sendfile(f, 0, size)
                # The size in the header is a promise: a file that shrank meanwhile is padded with zeros.
                _write_zeros(self.wfile, _padded(size) - copied)
                sent += _padded(size)
        _write_zeros(self.wfile, total - sent)

    def _output(self, cid, query):
        offset = int(self._float(query, "offset", 0, maximum=MAX_OFFSET))
        limit = int(self._float(query, "limit", DEFAULT_OUTPUT_CHUNK, low=1, high=MAX_OUTPUT_CHUNK))
        wait = self._float(query, "wait", 0.0, high=MAX_WAIT)
        data, size, st = self.server.commands.read_output(cid, offset, limit, wait)
        extra = {
            "X-Output-Size": str(size),
            "X-Command-State": st["state"],
            "X-Command-Boot-Id": st["boot_id"],
        }
        if st["state"] in FINISHED and offset + len(data) >= size:
            # The whole state once nothing is left to read: a follower needs no request of its own.
            extra["X-Command-Final"] = json.dumps(st, separators=(",", ":"))
        self._send_bytes(200, data, "application/octet-stream", extra)


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address,
        token,
        workdir,
        max_upload,
        idle_timeout,
        verbose=False,
        family=None,
        sock=None,
        max_archive_entries=DEFAULT_ARCHIVE_ENTRIES,
        max_archive_bytes=None,
        archive_seconds=DEFAULT_ARCHIVE_SECONDS,
    ):
        if sock is not None:  # already bound and listening (socket activation)
            self.address_family = sock.family
            ThreadingHTTPServer.__init__(self, sock.getsockname(), Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_name, self.server_port = self.server_address[:2]
        else:
            if family is not None:
                self.address_family = family
            ThreadingHTTPServer.__init__(self, address, Handler)
        self.token = token
        self.workspace = Workspace(workdir)
        self.boot_id = uuid.uuid4().hex
        self.commands = CommandStore(self.workspace, self.boot_id)
        self.uploads = UploadStaging(self.workspace)
        self.max_upload = max_upload
        # A download may be as large as an upload: a step's artifacts are the next step's files.
        self.max_archive_bytes = max_upload if max_archive_bytes is None else max_archive_bytes
        self.max_archive_entries = max_archive_entries
        self.archive_seconds = archive_seconds
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.scheme = "http"

    def server_bind(self):
        # Skip HTTPServer's getfqdn(): a reverse DNS lookup can stall start-up on a VM without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def enable_tls(self, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme = "https"

    def info(self):
        return {
            "version": VERSION,
            "boot_id": self.boot_id,
            "hostname": socket.gethostname(),
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(),
            "free_disk_bytes": free_disk_bytes(self.workspace.root),
            "commands_run": self.commands.commands_run,
            "max_upload_bytes": self.max_upload,
            "max_archive_entries": self.max_archive_entries,
            "max_archive_bytes": self.max_archive_bytes,
            "workdir": self.workspace.root,
            "time": time.time(),
        }

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if self.verbose or not isinstance(exc, (OSError, ssl.SSLError)):
            sys.stderr.write(f"testlab-agent: connection from {client_address} failed: {exc!r}\n")


# ------------------------------------------------------------------------------------------------- cli


def _parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def activated_socket():
    """The listening socket handed over by systemd-style socket activation, or None.

    A service manager (or the launcher of testlab's guest images) opens the port itself and passes it as
    file descriptor 3 with LISTEN_FDS=1 and LISTEN_PID set to our pid; the agent then serves it instead
    of binding --listen. The variables are removed so commands the agent starts do not see them.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)
    return sock


def build_parser():
    p = argparse.ArgumentParser(
        prog="testlab-agent",
        description="testlab guest agent: runs commands and moves files for the testlab engine.",
    )
    p.add_argument(
        "--listen",
        type=_parse_listen,
        default=("0.0.0.0", 8765),
        help="HOST:PORT (default 0.0.0.0:8765); ignored when a socket is handed over (LISTEN_FDS=1)",
    )
    p.add_argument("--token-file", required=True, help="file holding the bearer token clients must present")
    p.add_argument(
        "--workdir", required=True, help="directory every path is confined to (created if missing)"
    )
    p.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument(
        "--max-upload-bytes", type=int, default=8 << 30, help="largest accepted upload (default 8 GiB)"
    )
    p.add_argument(
        "--max-archive-entries",
        type=int,
        default=DEFAULT_ARCHIVE_ENTRIES,
        help=f"most files and directories in one download (default {DEFAULT_ARCHIVE_ENTRIES})",
    )
    p.add_argument(
        "--max-archive-bytes",
        type=int,
        default=None,
        help="largest download, file data summed (default: --max-upload-bytes)",
    )
    p.add_argument(
        "--archive-timeout",
        type=float,
        default=DEFAULT_ARCHIVE_SECONDS,
        help=f"seconds listing one download may take (default {DEFAULT_ARCHIVE_SECONDS:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        help="seconds a silent connection may hold a thread (default 120)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return p


def main(argv=None):
    """Entry point: serve until SIGTERM/SIGINT. Returns the process exit code."""
    args = build_parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.stderr.write("testlab-agent: --tls-cert and --tls-key go together\n")
        return 2
    try:
        with open(args.token_file, "rb") as f:
            token = f.read().strip()
    except OSError as exc:
        sys.stderr.write(f"testlab-agent: cannot read token file: {exc}\n")
        return 2
    if not token:
        sys.stderr.write(f"testlab-agent: token file {args.token_file} is empty\n")
        return 2
    numbers = (args.max_upload_bytes, args.idle_timeout, args.max_archive_entries, args.archive_timeout)
    if min(numbers) <= 0 or (args.max_archive_bytes is not None and args.max_archive_bytes <= 0):
        sys.stderr.write(
            "testlab-agent: --max-upload-bytes, --idle-timeout, --max-archive-entries, "
            "--max-archive-bytes and --archive-timeout must be positive\n"
        )
        return 2
    try:
        os.makedirs(args.workdir, exist_ok=True)
        family = socket.AF_INET6 if ":" in args.listen[0] else None
        server = AgentServer(
            args.listen,
            token,
            args.workdir,
            args.max_upload_bytes,
            args.idle_timeout,
            args.verbose,
            family,
            sock=activated_socket(),
            max_archive_entries=args.max_archive_entries,
            max_archive_bytes=args.max_archive_bytes,
            archive_seconds=args.archive_timeout,
        )
        if args.tls_cert:
            server.enable_tls(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        sys.stderr.write(f"testlab-agent: cannot start: {exc}\n")
        return 1

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    url = f"{server.scheme}://{host}:{port}"
    sys.stdout.write(f"testlab-agent {VERSION} listening on {url} boot_id={server.boot_id}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
