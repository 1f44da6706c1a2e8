"""The wire between the engine and its local hypervisor process (testlab/hypervisor/local_process.py).

One request and its answer at a time on a stream socket, each a JSON object after its length (four
bytes, network order). A request is `{"op": name, "args": [...]}`; its answer `{"result": value}`, or
`{"error": {"class", "message", "host", "domain"}}` for the backend's typed error, raised again on
the engine's side as the same class.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
from typing import Any

from testlab.hypervisor.base import (
    ERRORS_BY_NAME,
    AgentAddress,
    DomainState,
    HostHealth,
    HypervisorError,
    OperationFailed,
)
from testlab.hypervisor.base import OPERATIONS as BACKEND_OPERATIONS

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 20  # bytes; the largest answer, a list of snapshots, is far smaller

#: The calls the process serves: the Backend interface, and the local backend's fault injection.
OPERATIONS = frozenset({*BACKEND_OPERATIONS, "revert_and_locate", "break_agent", "close"})


def send(connection: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    connection.sendall(_HEADER.pack(len(body)) + body)


def receive(connection: socket.socket) -> dict[str, Any] | None:
    """The next message; None when the other end closed the connection between messages."""
    header = _read(connection, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
    body = _read(connection, size)
    if body is None:
        raise ConnectionError("the connection closed in the middle of a message")
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a message that is not a JSON object")
    return message


def _read(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            if data:
                raise ConnectionError("the connection closed in the middle of a message")
            return None
        data += chunk
    return data


def encode_result(value: Any) -> Any:
    if isinstance(value, AgentAddress | HostHealth):
        return dataclasses.asdict(value)
    return value  # DomainState is a str; lists of names and None are JSON already


def decode_result(op: str, value: Any) -> Any:
    if op == "state":
        return DomainState(value)
    if op in ("agent_address", "revert_and_locate"):
        return None if value is None else AgentAddress(**value)
    if op == "health":
        return HostHealth(**value)
    return value


def encode_error(error: BaseException) -> dict[str, Any]:
    """A typed error as it is; anything else (a bug) as OperationFailed naming its type, as the host's
    driver reports a stray exception of an in-process backend (testlab/hypervisor/driver.py)."""
    if isinstance(error, HypervisorError) and type(error).__name__ in ERRORS_BY_NAME:
        return {
            "class": type(error).__name__,
            "message": str(error),
            "host": error.host,
            "domain": error.domain,
        }
    return {
        "class": "OperationFailed",
        "message": f"{type(error).__name__}: {error}",
        "host": None,
        "domain": None,
    }


def decode_error(data: Any) -> HypervisorError:
    if not isinstance(data, dict):
        return OperationFailed(f"the local hypervisor process answered with a malformed error: {data!r}")
    cls = ERRORS_BY_NAME.get(str(data.get("class")), OperationFailed)
    return cls(str(data.get("message", "")), host=data.get("host"), domain=data.get("domain"))
