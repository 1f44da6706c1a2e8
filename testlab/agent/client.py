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
import json
import mmap
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from testlab.agent.bulk import BulkExchange, extract_archive
from testlab.agent.calls import AgentCalls, Answer
from testlab.agent.errors import (
    AgentError,
    AgentUnreachable,
    AuthenticationRefused,
    BootChanged,
    CommandUnknown,
    ProtocolError,
    Retryable,
    TransportFailure,
    UploadLost,
)
from testlab.metrics import AGENT_RECONNECTS

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentInfo",
    "AgentUnreachable",
    "AuthenticationRefused",
    "BootChanged",
    "CommandState",
    "CommandUnknown",
    "ProtocolError",
]

FINISHED_STATES = frozenset({"exited", "killed", "timeout"})
BACKOFF_INITIAL = 0.05
BACKOFF_CAP = 2.0
HASH_CHUNK = 1 << 20
BULK_THRESHOLD = 1 << 20  # uploads from this size on go over a bulk connection
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
    lost: bool = False  # the agent came back (reboot, restart) without the command's supervisor

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


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


def _state(data: Any) -> CommandState:
    try:
        return CommandState(
            id=str(data["id"]),
            state=str(data["state"]),
            exit_code=data["exit_code"],
            started=data["started"],
            ended=data["ended"],
            boot_id=str(data["boot_id"]),
            lost=bool(data.get("lost", False)),
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
        self._host = parts.hostname or ""  # a bad url: each call fails as unreachable
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
        self._http = AgentCalls(self._host, self._port, self._netloc, self._ssl, self._auth)
        self._last_contact = 0.0
        self._max_upload: int | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_time: float = 0.0,
    ) -> Answer:
        """One request, given the usual request time plus `extra_time` (a long poll's wait)."""
        return await self._http.request(
            method,
            f"{path}?{urlencode(params)}" if params else path,
            body=body,
            content_type=content_type,
            timeout=self._request_timeout + extra_time,
            connect_timeout=self._connect_timeout,
        )

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` until it succeeds, fails for real, or the agent stays silent too long."""
        started = time.monotonic()
        delay = BACKOFF_INITIAL
        while True:
            try:
                return await attempt()
            except (TransportFailure, Retryable) as exc:
                last: BaseException = exc
                AGENT_RECONNECTS.inc()
            give_up_at = max(started, self._last_contact) + self._retry_deadline
            if time.monotonic() + delay > give_up_at:
                silent = time.monotonic() - max(started, self._last_contact)
                cause = f"{type(last).__name__}: {last}"
                raise AgentUnreachable(
                    f"agent at {self.url} unreachable for {silent:.1f}s during {what}: {cause}"
                ) from last
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)

    def _check(self, answer: Answer, what: str) -> None:
        self._check_answer(answer.status, answer.content if answer.status >= 400 else b"", what)

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
        if status == 409 and code == "boot_changed":
            raise BootChanged(detail)
        if status == 404 and code == "unknown_upload":
            raise UploadLost(detail)
        if status in (502, 503, 504):
            raise Retryable(detail)
        raise ProtocolError(detail, code if isinstance(code, str) else None)

    def _touch(self) -> None:
        self._last_contact = time.monotonic()

    def _bulk(self, io_timeout: float | None = None) -> BulkExchange:
        return BulkExchange(
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
    async def _blocking(exchange: BulkExchange, call: Callable[[], T]) -> T:
        """Runs a blocking step of ``exchange`` in a thread; cancelling aborts its connection."""
        job = asyncio.ensure_future(asyncio.to_thread(call))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            exchange.abort()
            with contextlib.suppress(BaseException):
                await job
            raise

    async def _json(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        data: bytes | None = None,
        extra_time: float = 0.0,
    ) -> Any:
        """A call whose answer is JSON: with a JSON `body`, or raw `data` (a small upload)."""
        if data is not None:
            content, content_type = data, "application/octet-stream"
        elif body is not None:
            content, content_type = json.dumps(body).encode(), "application/json"
        else:
            content, content_type = b"", None

        async def attempt() -> Any:
            answer = await self._call(
                method, path, params=params, body=content, content_type=content_type, extra_time=extra_time
            )
            self._check(answer, what)
            try:
                return json.loads(answer.content)
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
        """Polls until the agent answers, e.g. after a VM boot or revert (a new boot id proves it).

        The first tries come a few milliseconds apart (a local sandbox answers within tens of them), then
        ever further apart, up to a quarter of a second (a guest that boots for seconds is asked four
        times a second, which costs it nothing)."""
        end = time.monotonic() + timeout
        delay = 0.002
        last: object = "no attempt"
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AgentUnreachable(f"agent at {self.url} not up after {timeout:.1f}s: {last}")
            try:
                per_try = min(self._request_timeout, remaining)
                answer = await self._http.request(
                    "GET", "/v1/info", timeout=per_try, connect_timeout=min(self._connect_timeout, per_try)
                )
                self._check(answer, "info")
                info = self._parse_info(json.loads(answer.content))
                if not_boot_id is None or info.boot_id != not_boot_id:
                    return info
                last = f"still the old boot id {not_boot_id}"
            except (TransportFailure, Retryable, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(max(0.0, min(delay, end - time.monotonic())))
            delay = min(delay * 2, 0.25)

    # --------------------------------------------------------------------------------------- files

    async def _check_upload_size(self, size: int, remote_path: str) -> None:
        if self._max_upload is None:
            await self.info()  # also proves the token before streaming a large body
        if self._max_upload is not None and size > self._max_upload:
            raise ProtocolError(
                f"upload of {remote_path}: {size} bytes exceed the agent's limit of {self._max_upload}"
            )

    async def _put(self, remote_path: str, content: bytes, digest: str, mode: int) -> None:
        what = f"upload of {remote_path}"
        params = {"path": remote_path, "sha256": digest, "mode": f"{mode:o}"}
        data = await self._json("PUT", "/v1/files", what, params=params, data=content)
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
            except UploadLost as exc:
                raise Retryable(str(exc)) from None
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
        await self._put(remote_path, data, digest_hex, file_mode)

    async def upload_bytes(self, data: bytes, remote_path: str, *, mode: int | None = None) -> None:
        await self._check_upload_size(len(data), remote_path)
        file_mode = 0o644 if mode is None else mode
        if len(data) >= BULK_THRESHOLD:
            digest = asyncio.ensure_future(asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()))
            await self._put_bulk(remote_path, bytes(data), len(data), file_mode, digest)
            return
        digest_hex = hashlib.sha256(data).hexdigest()
        await self._put(remote_path, bytes(data), digest_hex, file_mode)

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
                return await self._blocking(exchange, lambda: extract_archive(exchange, dest_dir))
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
        boot_id: str | None = None,
    ) -> CommandState:
        """Starts a command once: repeating the call with the same id returns the existing command.

        With `boot_id`, the agent starts nothing unless that is its boot id (BootChanged): the VM has
        not rebooted since it was prepared, checked in the same request that starts the command."""
        if (shell is None) == (argv is None):
            raise ValueError("give exactly one of shell= and argv=")
        body: dict[str, Any] = {"id": command_id, "cwd": cwd, "env": env or {}, "timeout": timeout}
        if boot_id is not None:
            body["boot_id"] = boot_id
        if shell is not None:
            body["shell"] = shell
        else:
            body["argv"] = list(argv or [])
        return _state(await self._json("POST", "/v1/commands", f"start of {command_id}", body=body))

    async def status(self, command_id: str, *, wait: float = 0) -> CommandState:
        """The command's state; with ``wait`` the agent answers as soon as it finishes (long poll)."""
        data = await self._json(
            "GET",
            self._cmd_path(command_id),
            f"status of {command_id}",
            params={"wait": f"{wait:.3f}"},
            extra_time=wait,
        )
        return _state(data)

    async def _output(
        self, command_id: str, offset: int, limit: int | None, wait: float
    ) -> tuple[bytes, str, str, CommandState | None]:
        """Output bytes, the command's state and boot id, and its whole final state when the command
        has ended and these bytes are the last (agents that do not send it leave it None)."""
        params: dict[str, str] = {"offset": str(offset), "wait": f"{wait:.3f}"}
        if limit is not None:
            params["limit"] = str(limit)
        what = f"output of {command_id}"

        async def attempt() -> tuple[bytes, str, str, CommandState | None]:
            answer = await self._call(
                "GET", self._cmd_path(command_id, "/output"), params=params, extra_time=wait
            )
            self._check(answer, what)
            final = answer.headers.get("x-command-final")
            try:
                state = _state(json.loads(final)) if final else None
            except ValueError as exc:
                raise ProtocolError(f"{what}: agent at {self.url} sent a malformed final state") from exc
            return (
                answer.content,
                answer.headers.get("x-command-state", ""),
                answer.headers.get("x-command-boot-id", ""),
                state,
            )

        return await self._retrying(what, attempt)

    async def read_output(self, command_id: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Combined stdout+stderr from ``offset``; a short read does not mean the end: see ``wait``."""
        data, _, _, _ = await self._output(command_id, offset, limit, 0.0)
        return data

    async def kill(self, command_id: str, *, wait: float = KILL_WAIT) -> CommandState:
        """Kills the command's whole process group; returns its state once it ended, or after `wait`
        seconds (the command may then still be running)."""
        data = await self._json(
            "POST",
            self._cmd_path(command_id, "/kill"),
            f"kill of {command_id}",
            params={"wait": str(wait)},
            extra_time=wait,
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
            data, state_name, cmd_boot, final = await self._output(command_id, offset, None, window)
            self._check_boot(command_id, cmd_boot, boot_id)
            if data:
                offset += len(data)
                result = on_output(data)
                if inspect.isawaitable(result):
                    await result
                if final is None:
                    continue
            if final is not None:
                return final
            if state_name in FINISHED_STATES or (end is not None and time.monotonic() >= end):
                state = await self.status(command_id)
                self._check_boot(command_id, state.boot_id, boot_id)
                return state
