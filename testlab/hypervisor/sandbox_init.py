"""PID 1 of a local sandbox: runs the agent, reaps every orphan, and ends with the agent.

The local backend starts each sandbox in a PID namespace of its own with this script as the
namespace's first process. Whatever a command does to leave its session or process group (setsid, a
double fork), it stays in the namespace, and its orphans are re-parented to this process, which reaps
them: the agent reaps only the supervisors it forks, so as PID 1 it would collect zombies. When the
agent exits, this process exits with its status and the kernel kills everything left in the
namespace; powering the sandbox off kills this process, with the same effect.

Start-up is on the critical path of every revert, so it does as little as it can: the agent runs in a
forked copy of this interpreter, not a second one; its code is loaded from the bytecode cache (running a
script by path would compile it at every start); and with `--socket-fd N` the listening socket, already
bound and listening in the backend, is handed to the agent (as socket activation, LISTEN_FDS=1): the
backend's first request is queued on it at once and answered as soon as the agent serves, so nobody
polls for the agent to come up.

With `--go-fd M` the sandbox is a spare, started ahead of the boot that will use it: the agent's process
loads the agent's bytecode and imports the modules the agent's top level imports (not the agent itself:
its code runs once, after the go), then waits for one byte on fd M and only then runs the agent; if fd
M is closed instead (the backend that holds its other end is gone, or wants no spare) it exits, and the
sandbox with it. What is left for the boot is the agent's own set-up. The loading happens after the
fork, so the agent's memory is its own: the init stays small, and the agent copies no page on write.
Standard library only, like the agent.

Usage: python3 -S sandbox_init.py [--socket-fd N] [--go-fd M] AGENT_SCRIPT [AGENT ARGUMENTS...]
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import signal
import sys
import types
from types import CodeType
from typing import NoReturn

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ACTIVATED_FD = 3  # where socket activation passes the listening socket


def run_agent(
    script: str, args: list[str], socket_fd: int | None = None, code: CodeType | None = None
) -> NoReturn:
    """In the child: run the agent script as `__main__`, as `python3 SCRIPT ARGS` would, then exit."""
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    if socket_fd is not None:
        _activate(socket_fd)
    status = 0
    try:
        _exec_main(script, code)
    except SystemExit as exc:
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code
        else:
            sys.stderr.write(f"{exc.code}\n")
            status = 1
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(status)


def _activate(socket_fd: int) -> None:
    """Hand the listening socket over as systemd-style socket activation does: fd 3, LISTEN_FDS=1 and
    LISTEN_PID naming this process (the agent checks both, then forgets them)."""
    if socket_fd != ACTIVATED_FD:
        os.dup2(socket_fd, ACTIVATED_FD)
        os.close(socket_fd)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())


def _load(script: str) -> tuple[importlib.machinery.SourceFileLoader, CodeType]:
    """The script's code from the bytecode cache (__pycache__, shared with imports of the same file;
    compiled, and cached where the directory is writable, when stale)."""
    loader = importlib.machinery.SourceFileLoader("__main__", script)
    code = loader.get_code("__main__")
    assert code is not None
    return loader, code


def _exec_main(script: str, code: CodeType | None = None) -> None:
    """Execute the script (or its code loaded beforehand) as the `__main__` module."""
    loader, loaded = _load(script) if code is None else (None, code)
    main = types.ModuleType("__main__")
    main.__file__ = script
    if loader is not None:
        main.__loader__ = loader
    sys.modules["__main__"] = main
    exec(loaded, main.__dict__)


def _preload(script: str) -> CodeType:
    """A spare's head start: the agent's code, and the modules its top level imports, loaded now.

    The imports are read off the source's unindented `import` and `from ... import` lines (parsing it
    would cost more than importing them all); whatever is missed is imported by the agent itself."""
    loader, code = _load(script)
    for line in (loader.get_source("__main__") or "").splitlines():
        if line.startswith("import "):
            names = [part.split()[0] for part in line[len("import ") :].split(",") if part.split()]
        elif line.startswith("from ") and not line.startswith(("from .", "from __future__ ")):
            names = line.split()[1:2]
        else:
            continue
        for name in names:
            with contextlib.suppress(Exception):  # the agent itself reports what it cannot import
                importlib.import_module(name)
    return code


def _wait_for_go(go_fd: int) -> bool:
    """True once one byte arrives (start the agent), False when the other end is closed (exit)."""
    try:
        return bool(os.read(go_fd, 1))
    except OSError:
        return False
    finally:
        os.close(go_fd)


def main() -> int:
    argv = sys.argv[1:]
    fds: dict[str, int] = {}
    while argv[:1] in (["--socket-fd"], ["--go-fd"]) and len(argv) >= 2 and argv[1].isdigit():
        fds[argv[0]], argv = int(argv[1]), argv[2:]
    if not argv:
        sys.stderr.write("usage: sandbox_init.py [--socket-fd N] [--go-fd M] AGENT_SCRIPT [ARGS...]\n")
        return 2
    socket_fd, go_fd = fds.get("--socket-fd"), fds.get("--go-fd")
    agent = os.fork()
    if agent == 0:
        code = None
        if go_fd is not None:  # loaded in the agent's own memory: nothing to copy on write after the go
            code = _preload(argv[0])
            if not _wait_for_go(go_fd):
                os._exit(0)
        run_agent(argv[0], argv[1:], socket_fd, code)
    for fd in (socket_fd, go_fd):  # the agent's alone: when it dies, waiting clients see its socket close
        if fd is not None:
            os.close(fd)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent, signum)

    for sig in FORWARDED:  # PID 1 ignores signals it has no handler for: pass them on to the agent
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == agent:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
