"""Who makes a request, and what they may do.

- Scripts and the CLI send `Authorization: Bearer TOKEN` (an API token of `testlab user add/token`).
- Browsers log in with a password and get a session cookie (HttpOnly, SameSite=Lax); every write made
  with that cookie also carries the session's CSRF token (a form field or the X-CSRF-Token header)
  and, when the browser sends one, an Origin of this server. A request with a bearer token needs no
  CSRF token: nothing sends it on a user's behalf.
- Without either, a request is anonymous: allowed to read only when the server says so
  (`TESTLAB_WEB_ANONYMOUS=1`), never to write.

Roles: `user` submits jobs and cancels or restarts their own; `admin` does everything, including the
VMs and hosts.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Depends, Request

from testlab.services.users import Identity, authenticate, session_identity
from testlab.web.context import web

SESSION_COOKIE = "testlab_session"
LOGIN_CSRF_COOKIE = "testlab_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuthProblem(Exception):
    """A request that is not allowed: 401 (who are you?) or 403 (not you). Pages turn a 401 into a
    redirect to the login page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Requester:
    identity: Identity | None
    via: str  # "token", "session" or "anonymous"
    csrf: str | None = None  # the session's CSRF token (sessions only)

    @property
    def name(self) -> str:
        return self.identity.name if self.identity else "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.identity is not None and self.identity.is_admin

    def may_change_job(self, owner: str) -> bool:
        return self.identity is not None and (self.identity.is_admin or self.identity.name == owner)


def _identify(request: Request) -> Requester:
    context = web(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthProblem(401, "send the API token as `Authorization: Bearer TOKEN`")
        identity = context.read(lambda session: authenticate(session, token))
        if identity is None:
            raise AuthProblem(401, "the API token is invalid, expired or revoked")
        return Requester(identity, "token")
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        found = context.read(lambda session: session_identity(session, secret))
        if found is not None:
            return Requester(found[0], "session", found[1])
    return Requester(None, "anonymous")


def requester(request: Request) -> Requester:
    """Whoever sends the request, authenticated or anonymous (cached for the request)."""
    cached = getattr(request.state, "requester", None)
    if cached is None:
        cached = request.state.requester = _identify(request)
    return cached


def reader(request: Request, who: Requester = Depends(requester)) -> Requester:
    """Anyone who may read: a user, or anyone at all when anonymous reading is allowed."""
    if who.identity is None and not web(request).options.anonymous:
        raise AuthProblem(401, "log in or send an API token")
    return who


async def _check_csrf(request: Request, who: Requester) -> None:
    if who.via != "session" or request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise AuthProblem(403, "request from another site refused")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and "form" in request.headers.get("content-type", ""):
        sent = (await request.form()).get(CSRF_FIELD)
    if not isinstance(sent, str) or not who.csrf or not hmac.compare_digest(sent, who.csrf):
        raise AuthProblem(403, "missing or wrong CSRF token: reload the page and try again")


async def user(request: Request, who: Requester = Depends(requester)) -> Requester:
    """A logged-in user (any role), for writes."""
    if who.identity is None:
        raise AuthProblem(401, "log in or send an API token")
    await _check_csrf(request, who)
    return who


async def admin(request: Request, who: Requester = Depends(user)) -> Requester:
    """An administrator."""
    if not who.is_admin:
        raise AuthProblem(403, f"user {who.name} is not an administrator")
    return who
