"""PID 1 of a local sandbox: runs the agent, reaps every orphan, and ends with the agent.

The local backend starts each sandbox in a PID namespace of its own with this script as the
namespace's first process. Whatever a command does to leave its session or process group (setsid, a
double fork), it stays in the namespace, and its orphans are re-parented to this process, which reaps
them: the agent reaps only the supervisors it forks, so as PID 1 it would collect zombies. When the
agent exits, this process exits with its status and the kernel kills everything left in the
namespace; powering the sandbox off kills this process, with the same effect.

The agent runs in a forked copy of this interpreter (`runpy`), not a second one: starting Python costs
more than the rest of a sandbox's boot. Standard library only, like the agent.

Usage: python3 sandbox_init.py AGENT_SCRIPT [AGENT ARGUMENTS...]
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_agent(script: str, args: list[str]) -> NoReturn:
    """In the child: run the agent script as `__main__`, as `python3 SCRIPT ARGS` would, then exit."""
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        import runpy

        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code)


def main() -> int:
    if len(sys.argv) < 2:
        sys.stderr.write("usage: sandbox_init.py AGENT_SCRIPT [ARGS...]\n")
        return 2
    agent = os.fork()
    if agent == 0:
        run_agent(sys.argv[1], sys.argv[2:])

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
