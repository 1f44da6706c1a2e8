"""A TCP proxy that breaks connections on command, to prove clients survive a bad network.

It runs its own asyncio loop in a background thread, so synchronous tests and tests with their own
event loop drive it alike. Faults:

- ``drop_after(n)``: each new connection is reset after forwarding ``n`` bytes (both directions summed);
- ``drop_all()``: reset every open connection now;
- ``blackhole(seconds)``: forward nothing for a while (data is held, as in a network partition);
- ``set_delay(seconds)``: added latency for every forwarded chunk;
- ``refuse(True)``: reset new connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class ProxyStats:
    connections: int = 0
    drops: int = 0
    refused: int = 0
    bytes_forwarded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.stats = ProxyStats()
        self._drop_after: int | None = None
        self._drop_connections: int | None = None
        self._blackhole_until = 0.0
        self._delay = 0.0
        self._refuse = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.Server | None = None

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, self.listen_host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:

            async def shutdown() -> None:
                assert self._server is not None
                self._server.close()
                for w in list(self._writers):
                    w.transport.abort()

            self._call(shutdown())
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.listen_host}:{self.port}"

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # ------------------------------------------------------------------------------------- faults

    def drop_after(self, nbytes: int, *, connections: int | None = None) -> None:
        """Reset each of the next ``connections`` connections (all, if None) after ``nbytes`` bytes."""
        self._drop_after = nbytes
        self._drop_connections = connections

    def drop_all(self) -> int:
        async def abort_all() -> int:
            writers = list(self._writers)
            for w in writers:
                w.transport.abort()
            return len(writers)

        count = self._call(abort_all())
        with self.stats.lock:
            self.stats.drops += count
        return count

    def blackhole(self, seconds: float) -> None:
        self._blackhole_until = time.monotonic() + seconds

    def set_delay(self, seconds: float) -> None:
        self._delay = seconds

    def refuse(self, on: bool = True) -> None:
        self._refuse = on

    def clear(self) -> None:
        self._drop_after = None
        self._drop_connections = None
        self._blackhole_until = 0.0
        self._delay = 0.0
        self._refuse = False

    # ------------------------------------------------------------------------------------ plumbing

    def _take_budget(self) -> int | None:
        if self._drop_after is None:
            return None
        if self._drop_connections is not None:
            if self._drop_connections <= 0:
                return None
            self._drop_connections -= 1
        return self._drop_after

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.stats.lock:
            self.stats.connections += 1
        if self._refuse:
            with self.stats.lock:
                self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        budget = [self._take_budget()]
        pair = (writer, up_writer)
        self._writers.update(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, budget, pair), self._pump(up_reader, writer, budget, pair)
            )
        finally:
            for w in pair:
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: list[int | None],
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(65536):
                while (hold := self._blackhole_until - time.monotonic()) > 0:
                    await asyncio.sleep(min(hold, 0.1))
                if self._delay:
                    await asyncio.sleep(self._delay)
                left = budget[0]
                if left is not None and len(data) >= left:
                    writer.write(data[:left])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    with self.stats.lock:
                        self.stats.drops += 1
                        self.stats.bytes_forwarded += left
                    for w in pair:
                        w.transport.abort()
                    return
                if left is not None:
                    budget[0] = left - len(data)
                writer.write(data)
                await writer.drain()
                with self.stats.lock:
                    self.stats.bytes_forwarded += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        for w in pair:
            w.transport.abort()
