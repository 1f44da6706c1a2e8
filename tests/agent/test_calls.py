"""The agent client's small-call transport against scripted HTTP servers on 127.0.0.1: connections
kept alive and replaced when the agent closed them, deadlines, and no answer ever read from the
wrong request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from testlab.agent.calls import AgentCalls
from testlab.agent.errors import ProtocolError, TransportFailure

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # request head -> keep the connection?


def _answer(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Server:
    """Answers each request with `handler`; counts the connections it accepted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def calls(self) -> AgentCalls:
        return AgentCalls("127.0.0.1", self.port, f"127.0.0.1:{self.port}", None, "Bearer t")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.startswith(b"Content-Length")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(head, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _echo_path(head: bytes, writer: asyncio.StreamWriter) -> bool:
    """Answers with the request's target, so that an answer read for the wrong request shows."""
    target = head.split(b" ")[1]
    if target.startswith(b"/slow"):
        await asyncio.sleep(0.5)
    writer.write(_answer(200, target))
    await writer.drain()
    return True


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_calls_reuse_one_connection_and_send_what_they_are_given() -> None:
    async def scenario() -> None:
        async with Server(_echo_path) as server:
            calls = server.calls()
            for n in range(5):
                answer = await calls.request("GET", f"/v1/x?n={n}", timeout=5, connect_timeout=5)
                assert (answer.status, answer.content) == (200, f"/v1/x?n={n}".encode())
            sent = await calls.request(
                "POST",
                "/v1/y",
                body=b'{"a": 1}',
                content_type="application/json",
                timeout=5,
                connect_timeout=5,
            )
            await calls.aclose()
        assert sent.content == b"/v1/y"
        assert server.connections == 1
        last = server.requests[-1]
        assert b"Authorization: Bearer t\r\n" in last and b"Content-Length: 8\r\n" in last
        assert b"Content-Type: application/json\r\n" in last and last.endswith(b'{"a": 1}')

    run(scenario)


def test_a_connection_the_agent_closed_while_idle_is_replaced_without_a_failure() -> None:
    async def one_answer_then_close(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(200, b"ok"))
        await writer.drain()
        return False  # like an agent restarted between two calls

    async def scenario() -> None:
        async with Server(one_answer_then_close) as server:
            calls = server.calls()
            for _ in range(3):
                assert (await calls.request("GET", "/", timeout=5, connect_timeout=5)).content == b"ok"
                await asyncio.sleep(0.05)
            await calls.aclose()
        assert server.connections == 3

    run(scenario)


def test_a_kept_connection_dropped_as_a_call_arrives_is_replaced_without_a_failure() -> None:
    """The race of every kept-alive connection: the agent closes it (a restart, an idle limit) just
    as the next request is sent on it."""

    async def answer_first_drop_second(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if answered.get(writer):
            return False  # closes without answering
        answered[writer] = True
        writer.write(_answer(200, b"ok"))
        await writer.drain()
        return True

    answered: dict[asyncio.StreamWriter, bool] = {}

    async def scenario() -> None:
        async with Server(answer_first_drop_second) as server:
            calls = server.calls()
            for _ in range(3):
                assert (await calls.request("GET", "/", timeout=5, connect_timeout=5)).content == b"ok"
            await calls.aclose()
        assert server.connections == 3

    run(scenario)


def test_an_answer_that_says_close_is_not_kept() -> None:
    async def closing(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(200, b"ok", "Connection: close"))
        await writer.drain()
        return True  # the server would keep it: the client must not

    async def scenario() -> None:
        async with Server(closing) as server:
            calls = server.calls()
            await calls.request("GET", "/", timeout=5, connect_timeout=5)
            await calls.request("GET", "/", timeout=5, connect_timeout=5)
            await calls.aclose()
        assert server.connections == 2

    run(scenario)


def test_a_silent_agent_fails_the_call_at_its_deadline() -> None:
    async def silent(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async def scenario() -> None:
        async with Server(silent) as server:
            calls = server.calls()
            started = time.monotonic()
            with pytest.raises(TransportFailure, match="no answer within 0.3 s"):
                await calls.request("GET", "/v1/info", timeout=0.3, connect_timeout=5)
            assert time.monotonic() - started < 2
            await calls.aclose()

    run(scenario)


def test_a_cancelled_call_leaves_no_answer_behind_for_the_next() -> None:
    async def scenario() -> None:
        async with Server(_echo_path) as server:
            calls = server.calls()
            slow = asyncio.ensure_future(calls.request("GET", "/slow", timeout=5, connect_timeout=5))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            await asyncio.sleep(0.6)  # the slow answer arrives on the cancelled call's connection
            answer = await calls.request("GET", "/fast", timeout=5, connect_timeout=5)
            await calls.aclose()
        assert answer.content == b"/fast"

    run(scenario)


def test_concurrent_calls_each_get_their_own_answer() -> None:
    async def scenario() -> None:
        async with Server(_echo_path) as server:
            calls = server.calls()
            answers = await asyncio.gather(
                *(calls.request("GET", f"/n{n}", timeout=5, connect_timeout=5) for n in range(8))
            )
            await calls.aclose()
        assert [a.content for a in answers] == [f"/n{n}".encode() for n in range(8)]

    run(scenario)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "chunked"),
        (b"SPDY/9 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (128 << 10) + b"\r\n\r\n", "oversized response head"),
    ],
)
def test_a_malformed_answer_is_a_protocol_error(raw: bytes, message: str) -> None:
    async def malformed(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return False

    async def scenario() -> None:
        async with Server(malformed) as server:
            calls = server.calls()
            with pytest.raises(ProtocolError, match=message):
                await calls.request("GET", "/", timeout=5, connect_timeout=5)
            await calls.aclose()

    run(scenario)


def test_an_answer_cut_short_is_a_transport_failure() -> None:
    async def cut(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        return False

    async def scenario() -> None:
        async with Server(cut) as server:
            calls = server.calls()
            with pytest.raises(TransportFailure, match="closed before the whole answer"):
                await calls.request("GET", "/", timeout=5, connect_timeout=5)
            await calls.aclose()

    run(scenario)


def test_nobody_listening_is_a_transport_failure() -> None:
    async def scenario() -> None:
        async with Server(_echo_path) as server:
            port = server.port
        calls = AgentCalls("127.0.0.1", port, f"127.0.0.1:{port}", None, "Bearer t")
        with pytest.raises(TransportFailure, match="cannot connect"):
            await calls.request("GET", "/", timeout=5, connect_timeout=5)

    run(scenario)
