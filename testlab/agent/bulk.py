"""The bulk transport: one HTTP/1.1 request on a connection of its own, driven by blocking calls.

httpx moves a big body at about a quarter of loopback speed (its async stack costs per read), so large
uploads and archive downloads go through here: `sendfile` out, `recv_into` large buffers in, disk I/O
in the same worker thread. The wire format is the same HTTP the agent serves to everyone; the retrying
API on top of it is testlab/agent/client.py.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testlab.agent.errors import ProtocolError, TransportFailure

IO_CHUNK = 1 << 20
MAX_HEAD = 64 << 10


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # names in lower case
    length: int = 0  # the body's Content-Length


def parse_head(raw: bytes) -> Head:
    """A response head (status line and headers, without the blank line) as the agent sends it: its
    bodies always have a Content-Length (testlab/agent/server.py), so a chunked one is refused."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"agent sent a bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ProtocolError("agent sent a chunked answer where a Content-Length was expected")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise ProtocolError("agent sent a bad Content-Length") from None
    if length < 0:
        raise ProtocolError("agent sent a bad Content-Length")
    return Head(int(parts[1]), headers, length)


class BulkExchange:
    """One HTTP/1.1 request on a connection of its own, driven by blocking calls in a worker thread.

    httpx moves a big body at about a quarter of loopback speed (its async stack costs per read), so
    large uploads and downloads go through here: ``sendfile`` out, ``recv_into`` large buffers in, disk
    I/O in the same thread. The wire format is the same HTTP the agent serves to everyone.
    """

    def __init__(
        self,
        host: str,
        port: int,
        netloc: str,
        ssl_context: ssl.SSLContext | None,
        auth: str,
        connect_timeout: float,
        io_timeout: float,
        touch: Callable[[], None],
    ) -> None:
        self._addr = (host, port)
        self._netloc = netloc
        self._ssl = ssl_context
        self._auth = auth
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._touch = touch
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._aborted = False
        self._pending = bytearray()
        self._body_left = 0

    # ---- connection

    def abort(self) -> None:
        """Called from the event loop: makes the worker's blocking call fail at once."""
        with self._lock:
            self._aborted = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()

    def _open(self) -> socket.socket:
        try:
            sock = socket.create_connection(self._addr, timeout=self._connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._addr[0])
            sock.settimeout(self._io_timeout)
        except OSError as exc:
            raise TransportFailure(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            if self._aborted:
                sock.close()
                raise TransportFailure("aborted")
            self._sock = sock
        return sock

    def _head_bytes(self, method: str, target: str, length: int | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._netloc}"]
        lines += [f"Authorization: {self._auth}", "Connection: close", "User-Agent: testlab-agent-client"]
        if length is not None:
            lines += [f"Content-Length: {length}", "Content-Type: application/octet-stream"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # ---- receiving

    def _recv_into(self, view: memoryview) -> int:
        assert self._sock is not None
        try:
            n = self._sock.recv_into(view)
        except OSError as exc:
            raise TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        self._touch()
        return n

    def read_head(self) -> Head:
        buf = bytearray(MAX_HEAD)
        view = memoryview(buf)
        while (end := self._pending.find(b"\r\n\r\n")) < 0:
            if len(self._pending) >= MAX_HEAD:
                raise ProtocolError("agent sent an oversized response head")
            n = self._recv_into(view)
            if not n:
                raise TransportFailure("connection closed before the answer")
            self._pending += view[:n]
        head = parse_head(bytes(self._pending[:end]))
        del self._pending[: end + 4]
        self._body_left = head.length - len(self._pending)
        if self._body_left < 0:
            del self._pending[head.length :]
            self._body_left = 0
        return head

    def readinto(self, view: memoryview) -> int:
        """Body bytes into ``view``; 0 only at the end of the body, which a broken connection never fakes."""
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            del self._pending[:n]
            return n
        if self._body_left <= 0:
            return 0
        n = self._recv_into(view[: min(len(view), self._body_left)])
        if not n:
            raise TransportFailure(f"connection closed with {self._body_left} body bytes missing")
        self._body_left -= n
        return n

    def read_body(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        buf = bytearray(min(IO_CHUNK, max(self._body_left, len(self._pending), 1)))  # small answers: small
        view = memoryview(buf)
        while n := self.readinto(view):
            if len(out) < limit:
                out += view[:n]
        return bytes(out[:limit])

    # ---- requests

    def get(self, target: str) -> Head:
        sock = self._open()
        try:
            sock.sendall(self._head_bytes("GET", target, None))
        except OSError as exc:
            raise TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        return self.read_head()

    def put(self, target: str, source: Path | bytes, size: int) -> tuple[Head, bytes]:
        """Sends the body (sendfile where the kernel can do it) and returns the answer."""
        sock = self._open()
        try:
            sock.sendall(self._head_bytes("PUT", target, size))
            if isinstance(source, bytes):
                sock.sendall(source)
            else:
                with open(source, "rb") as f:
                    if self._ssl is None:
                        sent = sock.sendfile(f, 0, size)
                    else:
                        sent = 0
                        while chunk := f.read(IO_CHUNK):
                            sock.sendall(chunk)
                            sent += len(chunk)
                if sent != size:
                    raise ProtocolError(f"{source} changed size while being uploaded")
            self._touch()
        except OSError as exc:
            # The agent may have refused the request and closed early: its answer explains more.
            try:
                head = self.read_head()
            except (TransportFailure, ProtocolError):
                raise TransportFailure(f"{type(exc).__name__}: {exc}") from exc
            return head, self.read_body()
        head = self.read_head()
        return head, self.read_body()


class _BodyFile(io.RawIOBase):
    """The archive body as a file for tarfile's stream reader, straight from the socket."""

    def __init__(self, exchange: BulkExchange) -> None:
        self._exchange = exchange

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._exchange.readinto(memoryview(buffer).cast("B"))


def extract_archive(exchange: BulkExchange, dest_dir: Path) -> list[Path]:
    """Unpacks the agent's tar stream, refusing any member that would land outside dest_dir."""
    files: list[Path] = []

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            return None
        checked = tarfile.data_filter(member, path)  # raises for absolute names, '..', links out
        if checked is not None and checked.isfile():
            files.append(dest_dir / checked.name)
        return checked

    source = io.BufferedReader(_BodyFile(exchange), IO_CHUNK)
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=IO_CHUNK, copybufsize=IO_CHUNK) as tar:
            tar.extractall(dest_dir, filter=guard)
    except tarfile.FilterError as exc:
        raise ProtocolError(f"unsafe archive from agent: {exc}") from None
    except tarfile.TarError as exc:
        raise ProtocolError(f"bad archive from agent: {exc}") from None
    return files
