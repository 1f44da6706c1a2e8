"""The engine's local backend: the same sandbox VMs, their work done in a process of their own.

A libvirt host's domains are libvirtd's: the engine's call costs it one round trip, and the disks,
processes and files of a revert are the hypervisor's work. A local host's were the engine's own, in its
process: a revert's copies, process starts and kills, /proc scans and settings files took a third
of the engine's CPU per task (as much as its database thread), and held the interpreter lock its
event loop and database thread wait for. So the engine runs each local host's `LocalBackend` in a child
process (testlab/hypervisor/local_server.py) and calls it over a socket pair per calling thread
(testlab/hypervisor/local_wire.py): the local hypervisor process is to the engine what libvirtd is.

- Started at the first call, not before: an engine that never touches the host never starts it.
- The backend's state is on disk (testlab/hypervisor/local.py), so nothing is lost when the process
  goes: a process that died is started again at the next call, and the call that was under way fails
  as an unreachable host (HostUnreachable).
- It ends with the engine. A clean stop closes the backend (spare sandboxes ended, background copies
  finished) and the control socket; an engine killed outright closes the control socket with its
  other files, and the process ends at once, as the backend inside the engine would have.
- Every call has a deadline: the host's deadline for the operation (as the host's driver applies it),
  and a little more on the socket, so that a thread never waits for ever on a process that hangs.

The CLI's commands, the tests and the demo's set-up use `LocalBackend` itself: a short command gains
nothing from a process of its own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from testlab.hypervisor import local_wire as wire
from testlab.hypervisor.base import (
    AgentAddress,
    Backend,
    DomainState,
    HostHealth,
    HostUnreachable,
    OperationTimedOut,
)
from testlab.hypervisor.driver import DEFAULT_TIMEOUTS
from testlab.hypervisor.local import LocalBackend

log = logging.getLogger("testlab.hypervisor.local_process")

SOCKET_MARGIN = 10.0  # seconds a call may wait beyond its operation's deadline (the driver's fires first)
CLOSE_TIMEOUT = 30.0  # seconds a clean stop waits for the process to end its spare sandboxes and copies
# The process imports modules as the engine did (its sys.path, given as the first argument): the same
# testlab, whatever the working directory or installation. Not through PYTHONPATH, which the sandboxes
# and the tasks they run would inherit.
_DEADLINE_OF = {"revert_and_locate": "revert"}  # calls that are part of an operation with a deadline
_SERVER = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from testlab.hypervisor.local_server import run; run(sys.argv[1:])"
)


class LocalProcessBackend(Backend):
    """A `LocalBackend` run in a child process; the same options, checked here when it is built."""

    kind = "local"
    option_names = LocalBackend.option_names

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        LocalBackend(host, uri, options)  # a bad URI or option fails here, at once, as in-process
        super().__init__(host, uri, options)
        self._spec = json.dumps({"host": host, "uri": uri, "options": self.options}, default=os.fspath)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._idle: list[socket.socket] = []  # connections to the live process, not in use

    # ---- the Backend interface

    def state(self, domain: str) -> DomainState:
        return self._call("state", domain)

    def power_on(self, domain: str) -> None:
        self._call("power_on", domain)

    def power_off(self, domain: str) -> None:
        self._call("power_off", domain)

    def revert(self, domain: str, snapshot: str) -> None:
        self._call("revert", domain, snapshot)

    def revert_and_locate(self, domain: str, snapshot: str) -> AgentAddress | None:
        return self._call("revert_and_locate", domain, snapshot)

    def list_snapshots(self, domain: str) -> list[str]:
        return self._call("list_snapshots", domain)

    def create_snapshot(self, domain: str, name: str) -> None:
        self._call("create_snapshot", domain, name)

    def health(self) -> HostHealth:
        return self._call("health")

    def power_cycle(self) -> None:
        self._call("power_cycle")

    def agent_address(self, domain: str) -> AgentAddress | None:
        return self._call("agent_address", domain)

    def ensure_domain(self, domain: str, snapshot: str) -> None:
        self._call("ensure_domain", domain, snapshot)

    def break_agent(self, domain: str, mode: str = "kill") -> None:
        """Fault injection, as `LocalBackend.break_agent`."""
        self._call("break_agent", domain, mode)

    def close(self) -> None:
        """End the process after a clean close of its backend; the next call starts a new one."""
        with self._lock:
            process, control, idle = self._process, self._control, self._idle
            self._process, self._control, self._idle = None, None, []
        for connection in idle:
            connection.close()
        if process is None:
            return
        if process.poll() is None and control is not None:
            try:
                connection = self._connect(control)
                try:
                    connection.settimeout(CLOSE_TIMEOUT)
                    wire.send(connection, {"op": "close", "args": []})
                    wire.receive(connection)
                finally:
                    connection.close()
            except (OSError, ValueError) as error:
                log.warning("host %s: closing the local hypervisor process: %s", self.host, error)
        if control is not None:
            control.close()
        _wait_or_kill(process)

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs (benchmarks count its CPU as the lab's)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # ---- calls

    def socket_timeout(self, op: str) -> float:
        """Seconds a call waits for its answer: its operation's deadline (the host's, else the
        default; a revert's for `revert_and_locate`), and a margin past the driver's."""
        operation = _DEADLINE_OF.get(op, op)
        seconds = self.deadlines().get(operation, DEFAULT_TIMEOUTS.get(operation, DEFAULT_TIMEOUTS["revert"]))
        return seconds + SOCKET_MARGIN

    def _call(self, op: str, *args: Any) -> Any:
        connection = self._connection()
        timeout = self.socket_timeout(op)
        try:
            connection.settimeout(timeout)
            wire.send(connection, {"op": op, "args": list(args)})
            answer = wire.receive(connection)
        except TimeoutError:
            connection.close()
            raise OperationTimedOut(
                f"{op}: the local hypervisor process did not answer within {timeout:g} s",
                host=self.host,
            ) from None
        except (OSError, ValueError) as error:
            connection.close()
            raise self._lost(op, error) from None
        if answer is None:
            connection.close()
            raise self._lost(op, ConnectionError("it closed the connection"))
        self._release(connection)
        if "error" in answer:
            raise wire.decode_error(answer["error"])
        return wire.decode_result(op, answer.get("result"))

    def _connection(self) -> socket.socket:
        """An idle connection to the live process, or a new one (starting the process if it is not
        running). A process that is dying refuses the connection before it can be reaped (its files
        close first): it is waited for and another started."""
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self._forget_process()
            if self._idle:
                return self._idle.pop()
            for attempt in (1, 2):
                if self._process is None:
                    self._start()
                assert self._control is not None and self._process is not None
                try:
                    return self._connect(self._control)
                except OSError as error:
                    if attempt == 2 or not _ended(self._process):
                        raise self._lost("connect", error) from None
                    self._forget_process()
            raise AssertionError("unreachable")

    def _release(self, connection: socket.socket) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._idle.append(connection)
                return
        connection.close()

    @staticmethod
    def _connect(control: socket.socket) -> socket.socket:
        mine, theirs = socket.socketpair()
        try:
            socket.send_fds(control, [b"c"], [theirs.fileno()])
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    def _lost(self, op: str, error: BaseException) -> HostUnreachable:
        process = self._process
        status = process.poll() if process is not None else None
        how = f"it exited with status {status}" if status is not None else f"{type(error).__name__}: {error}"
        log.warning("host %s: the local hypervisor process failed during %s: %s", self.host, op, how)
        return HostUnreachable(
            f"{op}: the local hypervisor process of host {self.host!r} failed ({how}); "
            "the next call starts it again",
            host=self.host,
        )

    # ---- the process

    def _start(self) -> None:
        control, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SERVER,
                    json.dumps(sys.path),
                    "--control-fd",
                    str(theirs.fileno()),
                    "--log-level",
                    str(logging.getLogger().getEffectiveLevel()),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a Ctrl-C is the engine's to handle: it closes this process
            )
        except OSError as error:
            control.close()
            raise HostUnreachable(
                f"cannot start the local hypervisor process of host {self.host!r}: {error}", host=self.host
            ) from None
        finally:
            theirs.close()
        try:
            assert process.stdin is not None
            process.stdin.write(self._spec.encode())
            process.stdin.close()
        except OSError:
            pass  # it died at once: the first call on it says so
        self._process, self._control = process, control

    def _forget_process(self) -> None:
        """The process ended by itself: drop what pointed at it (it is reaped already by poll)."""
        for connection in self._idle:
            connection.close()
        if self._control is not None:
            self._control.close()
        self._process, self._control, self._idle = None, None, []


def _ended(process: subprocess.Popen[bytes], within: float = 1.0) -> bool:
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def _wait_or_kill(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=CLOSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
