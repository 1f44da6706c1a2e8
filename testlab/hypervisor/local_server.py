"""The local hypervisor process: one host's `LocalBackend`, serving the engine that started it.

Started by testlab/hypervisor/local_process.py (`run`, with `--control-fd N`), with the host's
definition (JSON: host, uri, options) on its standard input. The
control socket carries no requests: the engine sends a new connection over it (a socket pair's end,
SCM_RIGHTS) for each of its threads that calls, and each connection is served by a thread of its own.
There is no address to connect to, so no other process can ask this one for anything.

When the control socket closes, the engine is gone, or done with this process after its `close`: the
process ends at once, its calls in flight with it, as they would have ended with the engine's own
process when the backend ran inside it. What it leaves is the backend's to finish at its next call,
as after any crash (testlab/hypervisor/local.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading
from typing import Any

from testlab.hypervisor import local_wire as wire
from testlab.hypervisor.local import LocalBackend
from testlab.threads import name_os_thread

log = logging.getLogger("testlab.hypervisor.local_server")


def serve_connection(backend: LocalBackend, connection: socket.socket) -> None:
    """Answer the requests of one connection, one after the other, until the engine closes it."""
    name_os_thread(threading.current_thread().name)
    with connection:
        while True:
            try:
                request = wire.receive(connection)
            except (OSError, ValueError) as error:
                log.warning("dropping a connection: %s", error)
                return
            if request is None:
                return
            try:
                answer = {"result": wire.encode_result(_call(backend, request))}
            except Exception as error:  # noqa: BLE001 - every error goes back to the caller, typed
                log.debug("%s failed", request.get("op"), exc_info=error)
                answer = {"error": wire.encode_error(error)}
            try:
                wire.send(connection, answer)
            except OSError:
                return  # the caller gave up at its deadline


def _call(backend: LocalBackend, request: dict[str, Any]) -> Any:
    op, args = request.get("op"), request.get("args", [])
    if op not in wire.OPERATIONS or not isinstance(args, list):
        raise ValueError(f"no such call: {op!r}")
    return getattr(backend, op)(*args)


def serve(backend: LocalBackend, control: socket.socket) -> None:
    """Take connections from the control socket until it closes."""
    served = 0
    while True:
        try:
            _message, fds, _flags, _address = socket.recv_fds(control, 16, 8, socket.MSG_CMSG_CLOEXEC)
        except OSError as error:
            log.error("the control socket failed: %s", error)
            return
        if not fds and not _message:
            return
        for fd in fds:
            served += 1
            threading.Thread(
                target=serve_connection,
                args=(backend, socket.socket(fileno=fd)),
                name=f"local-{backend.host}-{served}",
                daemon=True,
            ).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testlab.hypervisor.local_server")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.set_inheritable(args.control_fd, False)  # the sandboxes this process starts must not hold it
    control = socket.socket(fileno=args.control_fd)
    try:
        spec = json.load(sys.stdin)
        backend = LocalBackend(spec["host"], spec["uri"], spec["options"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"local hypervisor process: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    name_os_thread(f"local-{backend.host}")
    serve(backend, control)
    return 0


def run(argv: list[str] | None = None) -> None:
    """`main`, then the process's end without joining the threads serving calls: they end with it."""
    code = main(argv)
    with contextlib.suppress(Exception):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
