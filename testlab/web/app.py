"""The application factory: routers, error handlers, security headers, static files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import testlab
from testlab.config import Settings
from testlab.web import errors, health, pages
from testlab.web.api import jobs, lab, overview, tasks
from testlab.web.context import WebContext
from testlab.web.live import ChangeWatcher
from testlab.web.options import WebOptions

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
# No inline script or style anywhere: an injected tag can neither run nor restyle the page.
PAGE_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


class Hardening:
    """Security headers on every answer, no caching of anything that may be private, and a 400 for a
    NUL byte in the URL (no database accepts it in a string; it is never a real name)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("query_string", b"").lower()
        if "\x00" in scope.get("path", "") or b"%00" in raw or b"\x00" in raw:
            await _plain(send, 400, b'{"detail":"a NUL character is not allowed in a URL"}')
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", PAGE_POLICY))
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                if self.https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def static_dir() -> Path:
    return Path(str(resources.files("testlab.web") / "static"))


def create_app(
    settings: Settings, options: WebOptions | None = None, *, engine: object | None = None
) -> FastAPI:
    """The web application over the lab of `settings` (its schema must be at head: `testlab init`)."""
    options = options or WebOptions.from_env()
    app = FastAPI(
        title="testlab",
        version=testlab.__version__ if hasattr(testlab, "__version__") else "0",
        description=(
            "The REST API of a testlab server: jobs, tasks, logs and artifacts, VMs and hosts, their "
            "histories, statistics. Authenticate with `Authorization: Bearer TOKEN` "
            "(`testlab user add NAME` prints a token)."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.web = WebContext(
        settings, options, ChangeWatcher(settings.database_url, options.live_poll), engine
    )
    app.state.lab_metrics = health.lab_registry(settings.database_url)
    errors.install(app)
    for router in (jobs.router, tasks.router, lab.router, overview.router, health.router, pages.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(Hardening, https=options.secure_cookies)
    return app
