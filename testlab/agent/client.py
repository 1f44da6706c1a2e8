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
import queue
import ssl
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

FINISHED_STATES = frozenset({"exited", "killed", "timeout"})
BACKOFF_INITIAL = 0.05
BACKOFF_CAP = 2.0
IO_CHUNK = 1 << 20
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(IO_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    # Local disk reads are fast enough to do inline; a thread hop per megabyte would cost more.
    with open(path, "rb") as f:
        while chunk := f.read(IO_CHUNK):
            yield chunk


class _ChunkFeed(io.RawIOBase):
    """A readable file fed chunk by chunk from the event loop, so tar extraction overlaps the transfer."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self._pending = memoryview(b"")
        self._eof = False
        self.reader_gone = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._eof:
            chunk = self._queue.get()
            if chunk is None:
                self._eof = True
            else:
                self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    async def put(self, chunk: bytes | None) -> None:
        while not self.reader_gone:
            try:
                self._queue.put_nowait(chunk)
                return
            except queue.Full:
                await asyncio.sleep(0.002)

    def abandon(self) -> None:
        """Unblocks the reader for good: it sees a truncated archive and fails."""
        self._eof = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)


def _extract(source: _ChunkFeed, dest_dir: Path) -> list[Path]:
    """Unpacks the agent's tar stream, refusing any member that would land outside dest_dir."""
    files: list[Path] = []

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            return None
        checked = tarfile.data_filter(member, path)  # raises for absolute names, '..', links out
        if checked is not None and checked.isfile():
            files.append(dest_dir / checked.name)
        return checked

    try:
        with tarfile.open(fileobj=io.BufferedReader(source, IO_CHUNK), mode="r|") as tar:
            tar.extractall(dest_dir, filter=guard)
    except tarfile.FilterError as exc:
        raise ProtocolError(f"unsafe archive from agent: {exc}") from None
    except tarfile.TarError as exc:
        raise ProtocolError(f"bad archive from agent: {exc}") from None
    finally:
        source.reader_gone = True
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
        ssl_verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=self._timeout(),
            verify=ssl_verify,
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
            except (httpx.TransportError, _Retryable) as exc:
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
        self._last_contact = time.monotonic()
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
            message, code = str(body.get("error", "")), body.get("code")
        except (ValueError, AttributeError):
            message, code = resp.text[:200], None
        detail = f"{what}: agent at {self.url} answered {resp.status_code}: {message}"
        if resp.status_code == 401:
            raise AuthenticationRefused(detail)
        if resp.status_code == 404 and code == "unknown_command":
            raise CommandUnknown(detail)
        if resp.status_code in (502, 503, 504):
            raise _Retryable(detail)
        raise ProtocolError(detail)

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

    async def upload(self, local_path: Path, remote_path: str, *, mode: int | None = None) -> None:
        """Uploads a file; ``mode`` defaults to the local file's permission bits."""
        local_path = Path(local_path)
        st = local_path.stat()
        await self._check_upload_size(st.st_size, remote_path)
        digest = await asyncio.to_thread(_sha256_file, local_path)
        file_mode = mode if mode is not None else st.st_mode & 0o7777
        await self._put(remote_path, st.st_size, digest, file_mode, lambda: _file_chunks(local_path))

    async def upload_bytes(self, data: bytes, remote_path: str, *, mode: int | None = None) -> None:
        await self._check_upload_size(len(data), remote_path)
        digest = hashlib.sha256(data).hexdigest()
        await self._put(remote_path, len(data), digest, 0o644 if mode is None else mode, lambda: data)

    async def download(self, pattern: str, dest_dir: Path) -> list[Path]:
        """Fetches a path or glob (relative to the work dir) into dest_dir; [] if nothing matches."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        what = f"download of {pattern}"

        async def attempt() -> list[Path]:
            feed = _ChunkFeed()
            extracting: asyncio.Future[list[Path]] | None = None
            try:
                async with self._http.stream("GET", "/v1/archive", params={"pattern": pattern}) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                    self._check(resp, what)
                    if resp.headers.get("X-Match-Count") == "0":
                        return []
                    extracting = asyncio.ensure_future(asyncio.to_thread(_extract, feed, dest_dir))
                    async for chunk in resp.aiter_raw(IO_CHUNK):
                        if feed.reader_gone:
                            break  # extraction failed: its error is raised below
                        await feed.put(chunk)
                        self._last_contact = time.monotonic()
                await feed.put(None)
                return await extracting
            except BaseException:
                feed.abandon()
                if extracting is not None:
                    with contextlib.suppress(BaseException):
                        await extracting
                raise

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
