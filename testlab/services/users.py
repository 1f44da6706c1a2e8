"""Users, their API tokens, passwords and browser sessions.

Secrets are never stored: a token or a session cookie is 256 random bits kept as a SHA-256 hash (a
fast hash is enough, nothing to brute-force), and a password as a salted scrypt hash (slow on
purpose: people choose guessable passwords). Each secret is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from testlab.db.models import ApiToken, LoginFailure, User, WebSession, utcnow
from testlab.services.errors import NotFound, UserError
from testlab.services.views import iso_time as _time

# scrypt cost: about 50 ms and 16 MiB per check, so guessing is slow and a login is not.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Identity:
    """Who makes a request, as the web layer needs it (no secret in it)."""

    id: int
    name: str
    is_admin: bool

    @property
    def role(self) -> str:
        return "admin" if self.is_admin else "user"


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> None:
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"user name {name!r}: use letters, digits, '.', '-' and '_'")


def get_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        raise NotFound(f"user {name}: no such user")
    return user


def add_user(session: Session, name: str, *, admin: bool = False) -> str:
    """Create a user and return its first API token (the only time it is ever visible)."""
    _check_name(name)
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise UserError(f"user {name} already exists")
    user = User(name=name, is_admin=admin, created=utcnow())
    session.add(user)
    session.flush()
    return _new_token(session, user, "first", None)


def _new_token(session: Session, user: User, name: str, expires: datetime | None) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        ApiToken(user_id=user.id, token_hash=hash_token(token), name=name, created=utcnow(), expires=expires)
    )
    return token


def add_token(session: Session, user_name: str, *, name: str = "", lifetime: float | None = None) -> str:
    """Another API token for the user (one per robot or machine, revoked on its own); `lifetime` in
    seconds, None for a token that does not expire. Returns the token, shown only now."""
    user = get_user(session, user_name)
    expires = utcnow() + timedelta(seconds=lifetime) if lifetime is not None else None
    return _new_token(session, user, name, expires)


def list_tokens(session: Session, user_name: str) -> list[dict]:
    user = get_user(session, user_name)
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id))
    now = utcnow()
    return [
        {
            "id": t.id,
            "name": t.name,
            "created": _time(t.created),
            "expires": _time(t.expires),
            "state": "revoked"
            if t.revoked is not None
            else "expired"
            if t.expires is not None and t.expires <= now
            else "valid",
        }
        for t in rows
    ]


def revoke_tokens(session: Session, user_name: str, token_id: int | None = None) -> int:
    """Revoke one of the user's tokens (by id) or all of them; returns how many were revoked."""
    user = get_user(session, user_name)
    query = select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(None))
    if token_id is not None:
        query = query.where(ApiToken.id == token_id)
    tokens = session.scalars(query).all()
    if token_id is not None and not tokens:
        raise UserError(f"user {user_name} has no valid token {token_id}")
    now = utcnow()
    for token in tokens:
        token.revoked = now
    return len(tokens)


def list_users(session: Session) -> list[dict]:
    return [
        {"name": u.name, "role": "admin" if u.is_admin else "user", "password": u.password_hash is not None}
        for u in session.scalars(select(User).order_by(User.name))
    ]


def authenticate(session: Session, token: str) -> Identity | None:
    """The user an API token belongs to, if it is valid (neither expired nor revoked)."""
    # Looking the hash up is safe: timing reveals nothing about a token of 256 random bits.
    row = session.execute(
        select(User.id, User.name, User.is_admin)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(
            ApiToken.token_hash == hash_token(token),
            ApiToken.revoked.is_(None),
            or_(ApiToken.expires.is_(None), ApiToken.expires > utcnow()),
        )
    ).first()
    return Identity(*row) if row is not None else None


# ------------------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def _password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


# A hash to check against when the user does not exist, so timing does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def set_password(session: Session, user_name: str, password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    user = get_user(session, user_name)
    user.password_hash = hash_password(password)
    # Sessions opened with the old password end: a password change is how a leaked one is stopped.
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    return f"user {user_name}: password set"


def check_password(session: Session, user_name: str, password: str) -> Identity | None:
    user = session.scalars(select(User).where(User.name == user_name)).one_or_none()
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    if not _password_matches(password, stored) or user is None or not user.password_hash:
        return None
    return Identity(user.id, user.name, user.is_admin)


# ------------------------------------------------------------------------------ login rate limit


def recent_failures(session: Session, name: str, address: str, window: float) -> tuple[int, int]:
    """Failed logins in the last `window` seconds: (for this user name, from this address)."""
    since = utcnow() - timedelta(seconds=window)
    by_name = session.scalar(select(func.count()).where(LoginFailure.name == name, LoginFailure.time > since))
    by_address = session.scalar(
        select(func.count()).where(LoginFailure.address == address, LoginFailure.time > since)
    )
    return by_name or 0, by_address or 0


def record_failure(session: Session, name: str, address: str, window: float) -> None:
    now = utcnow()
    session.execute(delete(LoginFailure).where(LoginFailure.time < now - timedelta(seconds=window)))
    session.add(LoginFailure(time=now, name=name[:100], address=address[:100]))


# ------------------------------------------------------------------------------ browser sessions


def open_session(session: Session, identity: Identity, lifetime: float) -> tuple[str, str]:
    """A new browser session; returns (cookie secret, CSRF token). Expired sessions are purged."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires < now))
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            secret_hash=hash_token(secret),
            user_id=identity.id,
            csrf=csrf,
            created=now,
            expires=now + timedelta(seconds=lifetime),
        )
    )
    return secret, csrf


def session_identity(session: Session, secret: str) -> tuple[Identity, str] | None:
    """The user and CSRF token of a live browser session."""
    row = session.execute(
        select(User.id, User.name, User.is_admin, WebSession.csrf)
        .join(WebSession, WebSession.user_id == User.id)
        .where(WebSession.secret_hash == hash_token(secret), WebSession.expires > utcnow())
    ).first()
    if row is None:
        return None
    return Identity(row[0], row[1], row[2]), row[3]


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(WebSession).where(WebSession.secret_hash == hash_token(secret)))


NOTIFY_ON = ("never", "failure", "always")


def set_notifications(session: Session, name: str, *, email: str | None, notify_on: str | None) -> str:
    """Where and when a user hears of their jobs' ends (and, for administrators, of the lab's notices)."""
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise UserError(f"user {name}: no such user")
    if email is not None:
        if email and (len(email) > 300 or "@" not in email or any(c.isspace() or ord(c) < 32 for c in email)):
            raise UserError(f"e-mail address {email!r}: expected name@domain")
        user.email = email or None
    if notify_on is not None:
        if notify_on not in NOTIFY_ON:
            raise UserError(f"--on must be one of {', '.join(NOTIFY_ON)}")
        user.notify_on = notify_on
    return f"user {name}: e-mail {user.email or 'none'}, notified {user.notify_on}"
