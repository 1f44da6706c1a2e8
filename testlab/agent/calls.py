"""The transport of the agent client's small calls: HTTP/1.1 on asyncio streams, connections kept alive.

The engine makes a few small requests per task (start, output, info after a revert), each a JSON body
or a little output. A general HTTP client cost the engine about a millisecond of CPU per request in
its request and response models, URL parsing and stream layers; this is what those calls need and no
more: a request head and body written at once, a head and a Content-Length body read back. Large
bodies go through testlab/agent/bulk.py; retries and error classes are testlab/agent/client.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from testlab.agent.bulk import MAX_HEAD, Head, parse_head
from testlab.agent.errors import ProtocolError, TransportFailure

MAX_BODY = 64 << 20  # bytes: more than any answer to a small call (output reads are 1 MiB at most)
MAX_IDLE = 4  # kept-alive connections per agent; more concurrent calls open (and close) their own


@dataclass(frozen=True)
class Answer:
    head: Head
    content: bytes

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> dict[str, str]:
        return self.head.headers


class _Link:
    """One connection to the agent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def drop(self) -> None:
        self.writer.transport.abort()


class AgentCalls:
    """Requests to one agent over kept-alive connections. Not thread-safe: one event loop uses it."""

    def __init__(
        self, host: str, port: int, netloc: str, ssl_context: ssl.SSLContext | None, auth: str
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._fixed = f"Host: {netloc}\r\nAuthorization: {auth}\r\nUser-Agent: testlab-agent-client\r\n"
        self._idle: list[_Link] = []
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        *,
        timeout: float,
        connect_timeout: float,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Answer:
        """One exchange within `timeout` seconds (connecting within `connect_timeout` of them).

        Raises TransportFailure when the connection fails, breaks or is too slow: the caller may try
        again (every agent call is idempotent). A kept-alive connection that the agent closed while it
        sat idle is replaced at once, without counting as a failure."""
        head = self._head(method, target, body, content_type)
        try:
            async with asyncio.timeout(timeout):
                while self._idle:
                    link = self._idle.pop()
                    if not link.usable:
                        link.drop()
                        continue
                    answer = await self._exchange(link, head, body, reused=True)
                    if answer is not None:
                        return answer
                link = await self._connect(min(connect_timeout, timeout))
                answer = await self._exchange(link, head, body, reused=False)
                assert answer is not None
                return answer
        except TimeoutError:
            raise TransportFailure(
                f"{method} {target.partition('?')[0]}: no answer within {timeout:g} s"
            ) from None

    def _head(self, method: str, target: str, body: bytes, content_type: str | None) -> bytes:
        lines = f"{method} {target} HTTP/1.1\r\n{self._fixed}"
        if body or method in ("POST", "PUT"):
            lines += f"Content-Length: {len(body)}\r\n"
        if content_type is not None:
            lines += f"Content-Type: {content_type}\r\n"
        return (lines + "\r\n").encode("latin-1")

    async def _connect(self, timeout: float) -> _Link:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    limit=MAX_HEAD,
                )
        except TimeoutError:
            raise TransportFailure(f"cannot connect within {timeout:g} s") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportFailure(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        return _Link(reader, writer)

    async def _exchange(self, link: _Link, head: bytes, body: bytes, *, reused: bool) -> Answer | None:
        """The answer; None when a reused connection turned out closed before any answer came."""
        answered = False
        try:
            link.writer.write(head + body)  # small bodies only: big ones go through the bulk transport
            await link.writer.drain()
            raw = await link.reader.readuntil(b"\r\n\r\n")
            answered = True
            answer_head = parse_head(raw[:-4])
            if answer_head.length > MAX_BODY:
                raise ProtocolError(f"agent sent an oversized answer ({answer_head.length} bytes)")
            content = await link.reader.readexactly(answer_head.length) if answer_head.length else b""
        except asyncio.IncompleteReadError as exc:
            link.drop()
            if reused and not answered and not exc.partial:
                return None
            raise TransportFailure("connection closed before the whole answer came") from None
        except asyncio.LimitOverrunError:
            link.drop()
            raise ProtocolError("agent sent an oversized response head") from None
        except (ConnectionError, ssl.SSLError) as exc:
            link.drop()
            if reused and not answered:
                return None
            raise TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            link.drop()
            raise TransportFailure(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # a timeout, a cancel, a malformed answer: the connection's state is unknown
            link.drop()
            raise
        if answer_head.headers.get("connection", "").lower() == "close" or self._closed:
            link.drop()
        elif len(self._idle) < MAX_IDLE:
            self._idle.append(link)
        else:
            link.drop()
        return Answer(answer_head, content)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for link in idle:
            with contextlib.suppress(Exception):
                link.writer.close()
