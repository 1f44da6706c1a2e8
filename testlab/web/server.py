"""Running the web server (uvicorn), alone or with the engine in the same process and event loop.

`testlab serve --engine` is one asyncio process: uvicorn serves the pages and the API while the engine
plans and acts on the same loop (its blocking work already runs on its own threads, and the web
routes' database calls on the server's thread pool). SIGTERM or Ctrl-C stops both; an engine that
must stop (a lost lease) takes the server down with it, so a supervisor restarts the pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn

from testlab.config import Settings
from testlab.db.session import check_schema
from testlab.web.app import create_app
from testlab.web.options import WebOptions

log = logging.getLogger("testlab.web")

GRACEFUL_SHUTDOWN = 3.0  # seconds open requests (live streams) get once the server stops


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: `serve` owns the signals, for both parts."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    with_engine: bool = False,
    options: WebOptions | None = None,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (the engine's, when it ran and failed)."""
    check_schema(settings.database_url)
    options = options or WebOptions.from_env()

    async def main() -> int:
        engine = None
        if with_engine:
            from testlab.engine.daemon import Engine

            engine = Engine(settings)
        app = create_app(settings, options, engine=engine)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            access_log=access_log,
            log_level="info" if access_log else "warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            proxy_headers=True,
            server_header=False,
        )
        server = _Server(config)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True
            if engine is not None:
                engine.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        parts = [asyncio.create_task(server.serve(), name="web")]
        if engine is not None:
            parts.append(asyncio.create_task(engine.run(), name="engine"))
        helpers = []
        if on_ready is not None:
            helpers.append(asyncio.create_task(_announce(server, on_ready, host, port)))
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
            stop()
            await asyncio.gather(*parts, *helpers, return_exceptions=True)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if engine is not None and engine.exit_code:
            return engine.exit_code
        return 0 if server.started else 1

    return asyncio.run(main())


async def _announce(server: uvicorn.Server, on_ready: Callable[[str], None], host: str, port: int) -> None:
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.05)
    if server.started:
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{port}/")
