"""Process isolation of local sandboxes: each one is a PID namespace, so powering it off kills all of it.

A task may leave its session and process group (`setsid`, a double fork); without isolation such a
process survives the task, the revert and the power off, and can write into the next job's sandbox.
In a PID namespace it cannot get out: its orphans are re-parented to the namespace's first process
(`sandbox_init.py`, which starts the agent and reaps them), and when that process dies the kernel kills
every process of the namespace, atomically, whatever they did to their sessions. The namespace also
gets a /proc of its own (a mount namespace whose mounts follow the host's), so the agent and its
commands see the sandbox's processes with the pids they know.

A cgroup per sandbox would also allow killing all of it (`cgroup.kill`), but needs a writable cgroup2
hierarchy with delegation, is a shared resource to create and clean up, and a process there sees and
can signal every process of the machine; the namespace needs only the `unshare` command and
disappears with its last process.

It needs root (CAP_SYS_ADMIN) or, for other users, unprivileged user namespaces: the sandbox then gets a
user namespace mapping the user to itself. Where neither is available, starting a sandbox fails with
one line saying so: running tasks unisolated would silently break the promise that one job cannot
reach the next.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

INIT_SCRIPT = Path(__file__).resolve().with_name("sandbox_init.py")
PROBE_TIMEOUT = 10.0  # seconds: creating a namespace is a matter of milliseconds

_probe_lock = threading.Lock()
_probe_result: list[str | None] = []  # [problem or None] once probed


def unshare_flags() -> list[str]:
    """A new PID namespace whose first process is a child of `unshare` (killed if `unshare` dies),
    with its own /proc; as another user than root, in a user namespace mapping that user to itself."""
    flags = ["--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "slave"]
    if os.geteuid() != 0:
        flags.append("--map-current-user")
    return flags


def find_program(name: str) -> str | None:
    """`shutil.which`, remembered for the PATH it searched: every sandbox launch and disk copy asks,
    and a search of PATH cost more than the launch's own fork."""
    return _which(name, os.environ.get("PATH"))


@functools.lru_cache(maxsize=64)
def _which(name: str, path: str | None) -> str | None:
    return shutil.which(name, path=path)


def isolated_argv(
    script: str | os.PathLike[str],
    args: Sequence[str],
    socket_fd: int | None = None,
    go_fd: int | None = None,
) -> list[str]:
    """The command line running the Python `script` with `args` in a sandbox of its own, under
    sandbox_init.py as its PID 1. The script's process is the init's only child when it starts; with
    `socket_fd`, that inherited listening socket is handed to it (socket activation); with `go_fd`,
    the sandbox is a spare: loaded, it waits for a byte on that inherited pipe before starting it.

    The interpreter runs without `site` (-S): the init and the agent need the standard library only,
    and the site-packages' start-up hooks would cost a good part of a sandbox's boot."""
    unshare = find_program("unshare") or "unshare"
    init = [sys.executable, "-S", str(INIT_SCRIPT)]
    if socket_fd is not None:
        init += ["--socket-fd", str(socket_fd)]
    if go_fd is not None:
        init += ["--go-fd", str(go_fd)]
    return [unshare, *unshare_flags(), "--", *init, str(script), *args]


def isolation_problem() -> str | None:
    """Why sandboxes cannot be isolated on this machine (one line), or None. Probed once per process,
    with a deadline, by creating a throw-away namespace."""
    with _probe_lock:
        if not _probe_result:
            _probe_result.append(_probe())
        return _probe_result[0]


def _probe() -> str | None:
    why = "local sandboxes run in PID namespaces of their own"
    needs = "run as root, or enable unprivileged user namespaces"
    unshare = find_program("unshare")
    if unshare is None:
        return f"{why}, which needs the unshare command (util-linux), not found in PATH"
    try:
        proc = subprocess.run(
            [unshare, *unshare_flags(), "--", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"{why}, and creating one took more than {PROBE_TIMEOUT:g} s"
    except OSError as exc:
        return f"{why}, and {unshare} cannot run: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"{why}, which failed here ({lines[-1] if lines else f'exit {proc.returncode}'}): {needs}"
    return None
