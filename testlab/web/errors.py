"""Errors become one line, never a traceback: `{"detail": "..."}` for the API, a short page for people.

| error | status |
|---|---|
| a bad job file (DefinitionError) | 422, its `FILE:LINE: FIELD: message` |
| bad parameters (validation) | 422, `where: what` |
| what does not exist (NotFound) | 404 |
| anything else the user can act on (UserError) | 400 |
| the rows kept changing under the change (Conflict) | 409 |
| not logged in / not allowed (AuthProblem) | 401 / 403 (pages: a redirect to the login page) |
| too many failed logins (RateLimited) | 429 with Retry-After |
| a hypervisor failed or timed out | 502 / 504 |
| the database cannot be reached | 503 |
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from testlab.db.session import Conflict, SchemaOutOfDate
from testlab.domain.errors import DefinitionError
from testlab.hypervisor.base import HypervisorError, OperationTimedOut
from testlab.services.errors import NotFound, UserError
from testlab.web.auth import AuthProblem

log = logging.getLogger("testlab.web")


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def wants_html(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api/") or path in ("/metrics", "/healthz", "/openapi.json"))


def _answer(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if wants_html(request):
        from testlab.web.pages import error_page

        return error_page(request, status, message, headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    async def auth_problem(request: Request, error: AuthProblem) -> Response:
        if error.status == 401 and wants_html(request) and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return _answer(request, error.status, error.message, headers)

    async def user_error(request: Request, error: UserError) -> Response:
        return _answer(request, 404 if isinstance(error, NotFound) else 400, _one_line(error))

    async def definition_error(request: Request, error: DefinitionError) -> Response:
        return _answer(request, 422, _one_line(error))

    async def conflict(request: Request, error: Conflict) -> Response:
        return _answer(request, 409, "the lab kept changing under this change; try again")

    async def rate_limited(request: Request, error: RateLimited) -> Response:
        return _answer(request, 429, str(error), {"Retry-After": str(error.retry_after)})

    async def hypervisor(request: Request, error: HypervisorError) -> Response:
        return _answer(request, 504 if isinstance(error, OperationTimedOut) else 502, _one_line(error))

    async def database(request: Request, error: Exception) -> Response:
        log.warning("database error: %s", _one_line(error))
        return _answer(request, 503, "the database cannot be reached or is not ready")

    async def validation(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        return _answer(request, 422, f"{where}: {first.get('msg', 'invalid')}")

    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _answer(request, error.status_code, str(error.detail), getattr(error, "headers", None))

    async def unexpected(request: Request, error: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
        log.debug("unexpected error", exc_info=error)
        return _answer(request, 500, "internal error; the server's log has the details")

    app.add_exception_handler(AuthProblem, auth_problem)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(DefinitionError, definition_error)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(RateLimited, rate_limited)
    app.add_exception_handler(HypervisorError, hypervisor)
    app.add_exception_handler(OperationalError, database)
    app.add_exception_handler(SchemaOutOfDate, database)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
