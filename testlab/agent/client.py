"""Asyncio client of the guest agent, as the engine uses it.

Every call has a deadline and survives lost connections: transport failures are retried with capped
exponential back-off until ``retry_deadline`` seconds have passed without any successful contact with
the agent. Retrying is always safe because every operation is idempotent on the agent's side: uploads
are replaced whole (checksum verified before the rename), ``start`` is keyed by a client-chosen id, and
kill, delete and reads change nothing when repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import io
import json
import mmap
import socket
import ssl
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import httpx

FINISHED_STATES = frozenset({"exited", "killed", "timeout"})
BACKOFF_INITIAL = 0.05
BACKOFF_CAP = 2.0
IO_CHUNK = 1 << 20
HASH_CHUNK = 1 << 20
BULK_THRESHOLD = 1 << 20  # uploads from this size on go over a bulk connection
MAX_HEAD = 64 << 10
KILL_WAIT = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class AgentInfo:
    version: str
    boot_id: str
    hostname: str
    os: str
    free_disk_bytes: int
    commands_run: int


@dataclass(frozen=True)
class CommandState:
    id: str
    state: str  # "running" | "exited" | "killed" | "timeout"
    exit_code: int | None  # negative: killed by that signal number
    started: float | None  # epoch seconds
    ended: float | None
    boot_id: str  # boot id of the agent that started the command

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class AgentError(Exception):
    """Base of everything this client raises."""


class AgentUnreachable(AgentError):
    """No answer from the agent within the retry deadline: an infrastructure error, never a test failure."""


class AuthenticationRefused(AgentError):
    """The agent refused our token: retrying cannot help."""


class CommandUnknown(AgentError):
    """The command is gone: the VM was reverted or rebooted, so its work is lost."""


class ProtocolError(AgentError):
    """The agent refused the request (bad path, too large...) or answered something unexpected."""


class _Retryable(Exception):
    """An answer meaning 'try again later' (a proxy in between could not reach the agent)."""


class _UploadLost(AgentError):
    """The agent no longer holds a staged upload (it restarted): the whole upload must be sent again."""


def _sha256_file(path: Path) -> str:
    """Hashes straight from the page cache through a mapping, sparing a copy of every byte."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # empty file, or one that cannot be mapped
            buf = bytearray(HASH_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                digest.update(view[:n])
            return digest.hexdigest()
        with mapped, memoryview(mapped) as view:
            for start in range(0, len(view), HASH_CHUNK):
                digest.update(view[start : start + HASH_CHUNK])
    return digest.hexdigest()


class _TransportFailure(Exception):
    """The bulk connection broke or timed out: as retryable as an httpx transport error."""


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]  # names in lower case


class _BulkExchange:
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
            raise _TransportFailure(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            if self._aborted:
                sock.close()
                raise _TransportFailure("aborted")
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
            raise _TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        self._touch()
        return n

    def read_head(self) -> _Head:
        buf = bytearray(MAX_HEAD)
        view = memoryview(buf)
        while (end := self._pending.find(b"\r\n\r\n")) < 0:
            if len(self._pending) >= MAX_HEAD:
                raise ProtocolError("agent sent an oversized response head")
            n = self._recv_into(view)
            if not n:
                raise _TransportFailure("connection closed before the answer")
            self._pending += view[:n]
        lines = bytes(self._pending[:end]).decode("latin-1").split("\r\n")
        del self._pending[: end + 4]
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
        self._body_left = length - len(self._pending)
        if self._body_left < 0:
            del self._pending[length:]
            self._body_left = 0
        return _Head(int(parts[1]), headers)

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
            raise _TransportFailure(f"connection closed with {self._body_left} body bytes missing")
        self._body_left -= n
        return n

    def read_body(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        buf = bytearray(IO_CHUNK)
        view = memoryview(buf)
        while n := self.readinto(view):
            if len(out) < limit:
                out += view[:n]
        return bytes(out[:limit])

    # ---- requests

    def get(self, target: str) -> _Head:
        sock = self._open()
        try:
            sock.sendall(self._head_bytes("GET", target, None))
        except OSError as exc:
            raise _TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        return self.read_head()

    def put(self, target: str, source: Path | bytes, size: int) -> tuple[_Head, bytes]:
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
            except (_TransportFailure, ProtocolError):
                raise _TransportFailure(f"{type(exc).__name__}: {exc}") from exc
            return head, self.read_body()
        head = self.read_head()
        return head, self.read_body()


class _BodyFile(io.RawIOBase):
    """The archive body as a file for tarfile's stream reader, straight from the socket."""

    def __init__(self, exchange: _BulkExchange) -> None:
        self._exchange = exchange

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._exchange.readinto(memoryview(buffer).cast("B"))


def _extract(exchange: _BulkExchange, dest_dir: Path) -> list[Path]:
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


def _state(data: Any) -> CommandState:
    try:
        return CommandState(
            id=str(data["id"]),
            state=str(data["state"]),
            exit_code=data["exit_code"],
            started=data["started"],
            ended=data["ended"],
            boot_id=str(data["boot_id"]),
        )
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed command state from agent: {data!r}") from exc


class AgentClient:
    """One agent, one connection pool. Cheap to keep open for the life of a host."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        retry_deadline: float = 60.0,
        verify: bool | str = True,
    ) -> None:
        self.url = url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._retry_deadline = retry_deadline
        parts = urlsplit(self.url)
        self._host = parts.hostname or ""  # a bad url fails each call as unreachable, as httpx does
        try:
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            self._port = 0
        self._netloc = parts.netloc.rpartition("@")[2]
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._auth = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": self._auth},
            timeout=self._timeout(),
            verify=self._ssl if self._ssl is not None else True,
            trust_env=False,
        )
        self._last_contact = 0.0
        self._max_upload: int | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------ plumbing

    def _timeout(self, extra: float = 0.0) -> httpx.Timeout:
        return httpx.Timeout(self._request_timeout + extra, connect=self._connect_timeout)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` until it succeeds, fails for real, or the agent stays silent too long."""
        started = time.monotonic()
        delay = BACKOFF_INITIAL
        while True:
            try:
                return await attempt()
            except (httpx.TransportError, _TransportFailure, _Retryable) as exc:
                last: BaseException = exc
            give_up_at = max(started, self._last_contact) + self._retry_deadline
            if time.monotonic() + delay > give_up_at:
                silent = time.monotonic() - max(started, self._last_contact)
                cause = f"{type(last).__name__}: {last}"
                raise AgentUnreachable(
                    f"agent at {self.url} unreachable for {silent:.1f}s during {what}: {cause}"
                ) from last
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)

    def _check(self, resp: httpx.Response, what: str) -> None:
        self._check_answer(resp.status_code, resp.content if resp.status_code >= 400 else b"", what)

    def _check_answer(self, status: int, body: bytes, what: str) -> None:
        self._last_contact = time.monotonic()
        if status < 400:
            return
        try:
            data = json.loads(body)
            message, code = str(data.get("error", "")), data.get("code")
        except (ValueError, AttributeError):
            message, code = body[:200].decode(errors="replace"), None
        detail = f"{what}: agent at {self.url} answered {status}: {message}"
        if status == 401:
            raise AuthenticationRefused(detail)
        if status == 404 and code == "unknown_command":
            raise CommandUnknown(detail)
        if status == 404 and code == "unknown_upload":
            raise _UploadLost(detail)
        if status in (502, 503, 504):
            raise _Retryable(detail)
        raise ProtocolError(detail)

    def _touch(self) -> None:
        self._last_contact = time.monotonic()

    def _bulk(self, io_timeout: float | None = None) -> _BulkExchange:
        return _BulkExchange(
            self._host,
            self._port,
            self._netloc,
            self._ssl,
            self._auth,
            self._connect_timeout,
            self._request_timeout if io_timeout is None else io_timeout,
            self._touch,
        )

    @staticmethod
    async def _blocking(exchange: _BulkExchange, call: Callable[[], T]) -> T:
        """Runs a blocking step of ``exchange`` in a thread; cancelling aborts its connection."""
        job = asyncio.ensure_future(asyncio.to_thread(call))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            exchange.abort()
            with contextlib.suppress(BaseException):
                await job
            raise

    async def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            resp = await self._http.request(method, path, **kwargs)
            self._check(resp, what)
            try:
                return resp.json()
            except ValueError as exc:
                raise ProtocolError(f"{what}: agent at {self.url} sent invalid JSON") from exc

        return await self._retrying(what, attempt)

    @staticmethod
    def _cmd_path(command_id: str, suffix: str = "") -> str:
        return f"/v1/commands/{quote(command_id, safe='')}{suffix}"

    # ---------------------------------------------------------------------------------------- info

    def _parse_info(self, data: Any) -> AgentInfo:
        try:
            self._max_upload = data.get("max_upload_bytes", self._max_upload)
            return AgentInfo(
                version=str(data["version"]),
                boot_id=str(data["boot_id"]),
                hostname=str(data["hostname"]),
                os=str(data["os"]),
                free_disk_bytes=int(data["free_disk_bytes"]),
                commands_run=int(data["commands_run"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed info from agent at {self.url}: {data!r}") from exc

    async def info(self) -> AgentInfo:
        return self._parse_info(await self._json("GET", "/v1/info", "info"))

    async def wait_until_up(self, *, timeout: float, not_boot_id: str | None = None) -> AgentInfo:
        """Polls until the agent answers, e.g. after a VM boot or revert (a new boot id proves it)."""
        end = time.monotonic() + timeout
        delay = 0.1
        last: object = "no attempt"
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AgentUnreachable(f"agent at {self.url} not up after {timeout:.1f}s: {last}")
            try:
                per_try = min(self._request_timeout, remaining)
                resp = await self._http.get(
                    "/v1/info", timeout=httpx.Timeout(per_try, connect=min(self._connect_timeout, per_try))
                )
                self._check(resp, "info")
                info = self._parse_info(resp.json())
                if not_boot_id is None or info.boot_id != not_boot_id:
                    return info
                last = f"still the old boot id {not_boot_id}"
            except (httpx.TransportError, _Retryable, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(max(0.0, min(delay, end - time.monotonic())))
            delay = min(delay * 2, 1.0)

    # --------------------------------------------------------------------------------------- files

    async def _check_upload_size(self, size: int, remote_path: str) -> None:
        if self._max_upload is None:
            await self.info()  # also proves the token before streaming a large body
        if self._max_upload is not None and size > self._max_upload:
            raise ProtocolError(
                f"upload of {remote_path}: {size} bytes exceed the agent's limit of {self._max_upload}"
            )

    async def _put(
        self, remote_path: str, size: int, digest: str, mode: int, body: Callable[[], Any]
    ) -> None:
        what = f"upload of {remote_path}"
        params = {"path": remote_path, "sha256": digest, "mode": f"{mode:o}"}
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        data = await self._json(
            "PUT", "/v1/files", what, params=params, headers=headers, content=_Replayable(body)
        )
        if data.get("sha256") != digest:
            raise ProtocolError(f"{what}: agent stored sha256 {data.get('sha256')}, expected {digest}")

    async def _put_bulk(
        self, remote_path: str, source: Path | bytes, size: int, mode: int, digest: asyncio.Future[str]
    ) -> None:
        """Sends the body while ``digest`` is computed alongside, then commits it under that digest.

        The agent stages the body out of sight; only the commit, which carries the digest, makes it
        appear under its name. A broken send is retried whole under a fresh upload id.
        """
        what = f"upload of {remote_path}"

        async def attempt() -> None:
            upload_id = uuid.uuid4().hex
            query = urlencode({"path": remote_path, "mode": f"{mode:o}", "upload": upload_id})
            exchange = self._bulk()
            try:
                head, body = await self._blocking(
                    exchange, lambda: exchange.put(f"/v1/files?{query}", source, size)
                )
            finally:
                exchange.close()
            self._check_answer(head.status, body, what)
            expected = await digest
            params = {"path": remote_path, "upload": upload_id, "sha256": expected}
            try:
                data = await self._json("POST", "/v1/files/commit", what, params=params)
            except _UploadLost as exc:
                raise _Retryable(str(exc)) from None
            if data.get("sha256") != expected or data.get("size") != size:
                raise ProtocolError(f"{what}: agent stored {data!r}, expected sha256 {expected}")

        try:
            await self._retrying(what, attempt)
        finally:
            if not digest.done():
                digest.cancel()
            with contextlib.suppress(BaseException):
                await digest

    async def upload(self, local_path: Path, remote_path: str, *, mode: int | None = None) -> None:
        """Uploads a file; ``mode`` defaults to the local file's permission bits."""
        local_path = Path(local_path)
        st = local_path.stat()
        await self._check_upload_size(st.st_size, remote_path)
        file_mode = mode if mode is not None else st.st_mode & 0o7777
        if st.st_size >= BULK_THRESHOLD:
            digest = asyncio.ensure_future(asyncio.to_thread(_sha256_file, local_path))
            await self._put_bulk(remote_path, local_path, st.st_size, file_mode, digest)
            return
        data = await asyncio.to_thread(local_path.read_bytes)
        digest_hex = hashlib.sha256(data).hexdigest()
        await self._put(remote_path, len(data), digest_hex, file_mode, lambda: data)

    async def upload_bytes(self, data: bytes, remote_path: str, *, mode: int | None = None) -> None:
        await self._check_upload_size(len(data), remote_path)
        file_mode = 0o644 if mode is None else mode
        if len(data) >= BULK_THRESHOLD:
            digest = asyncio.ensure_future(asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()))
            await self._put_bulk(remote_path, bytes(data), len(data), file_mode, digest)
            return
        digest_hex = hashlib.sha256(data).hexdigest()
        await self._put(remote_path, len(data), digest_hex, file_mode, lambda: data)

    async def download(self, pattern: str, dest_dir: Path) -> list[Path]:
        """Fetches a path or glob (relative to the work dir) into dest_dir; [] if nothing matches."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        what = f"download of {pattern}"
        target = "/v1/archive?" + urlencode({"pattern": pattern})

        async def attempt() -> list[Path]:
            exchange = self._bulk()
            try:
                head = await self._blocking(exchange, lambda: exchange.get(target))
                if head.status >= 400:
                    body = await self._blocking(exchange, exchange.read_body)
                    self._check_answer(head.status, body, what)
                self._touch()
                if head.headers.get("x-match-count") == "0":
                    return []
                return await self._blocking(exchange, lambda: _extract(exchange, dest_dir))
            finally:
                exchange.close()

        return await self._retrying(what, attempt)

    async def delete(self, remote_path: str) -> None:
        await self._json("DELETE", "/v1/files", f"delete of {remote_path}", params={"path": remote_path})

    # ------------------------------------------------------------------------------------ commands

    async def start(
        self,
        command_id: str,
        *,
        shell: str | None = None,
        argv: list[str] | None = None,
        cwd: str = ".",
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandState:
        """Starts a command once: repeating the call with the same id returns the existing command."""
        if (shell is None) == (argv is None):
            raise ValueError("give exactly one of shell= and argv=")
        body: dict[str, Any] = {"id": command_id, "cwd": cwd, "env": env or {}, "timeout": timeout}
        if shell is not None:
            body["shell"] = shell
        else:
            body["argv"] = list(argv or [])
        return _state(await self._json("POST", "/v1/commands", f"start of {command_id}", json=body))

    async def status(self, command_id: str, *, wait: float = 0) -> CommandState:
        """The command's state; with ``wait`` the agent answers as soon as it finishes (long poll)."""
        data = await self._json(
            "GET",
            self._cmd_path(command_id),
            f"status of {command_id}",
            params={"wait": f"{wait:.3f}"},
            timeout=self._timeout(wait),
        )
        return _state(data)

    async def _output(
        self, command_id: str, offset: int, limit: int | None, wait: float
    ) -> tuple[bytes, str, str]:
        params: dict[str, str] = {"offset": str(offset), "wait": f"{wait:.3f}"}
        if limit is not None:
            params["limit"] = str(limit)
        what = f"output of {command_id}"

        async def attempt() -> tuple[bytes, str, str]:
            resp = await self._http.get(
                self._cmd_path(command_id, "/output"), params=params, timeout=self._timeout(wait)
            )
            self._check(resp, what)
            return (
                resp.content,
                resp.headers.get("X-Command-State", ""),
                resp.headers.get("X-Command-Boot-Id", ""),
            )

        return await self._retrying(what, attempt)

    async def read_output(self, command_id: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Combined stdout+stderr from ``offset``; a short read does not mean the end: see ``wait``."""
        data, _, _ = await self._output(command_id, offset, limit, 0.0)
        return data

    async def kill(self, command_id: str) -> CommandState:
        """Kills the command's whole process group; returns its final state once the agent has it."""
        data = await self._json(
            "POST",
            self._cmd_path(command_id, "/kill"),
            f"kill of {command_id}",
            params={"wait": str(KILL_WAIT)},
            timeout=self._timeout(KILL_WAIT),
        )
        return _state(data)

    def _check_boot(self, command_id: str, actual: str, expected: str | None) -> None:
        if expected is not None and actual != expected:
            raise CommandUnknown(
                f"command {command_id} on {self.url} belongs to agent boot {actual}, not {expected}: "
                "the host was reverted or rebooted"
            )

    async def wait(
        self,
        command_id: str,
        *,
        boot_id: str | None = None,
        on_output: Callable[[bytes], Awaitable[None] | None] | None = None,
        output_offset: int = 0,
        deadline: float | None = None,
    ) -> CommandState:
        """Follows a command to its end across lost connections, feeding each output byte once.

        ``boot_id`` is the one of the ``CommandState`` that ``start`` returned. ``deadline`` is in seconds
        from now; when it passes, the current (possibly running) state is returned.
        """
        end = None if deadline is None else time.monotonic() + deadline
        poll = max(0.5, min(20.0, self._request_timeout / 2))
        offset = output_offset
        while True:
            window = poll if end is None else max(0.0, min(poll, end - time.monotonic()))
            if on_output is None:
                state = await self.status(command_id, wait=window)
                self._check_boot(command_id, state.boot_id, boot_id)
                if state.finished or (end is not None and time.monotonic() >= end):
                    return state
                continue
            data, state_name, cmd_boot = await self._output(command_id, offset, None, window)
            self._check_boot(command_id, cmd_boot, boot_id)
            if data:
                offset += len(data)
                result = on_output(data)
                if inspect.isawaitable(result):
                    await result
                continue
            if state_name in FINISHED_STATES or (end is not None and time.monotonic() >= end):
                state = await self.status(command_id)
                self._check_boot(command_id, state.boot_id, boot_id)
                return state


class _Replayable:
    """An upload body httpx can send again on retry: a fresh iterator per attempt."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self._factory()
        if isinstance(body, bytes):
            yield body
            return
        async for chunk in body:
            yield chunk
