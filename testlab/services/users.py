"""Users and their API tokens. Only a hash of each token is stored; the token is shown once."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import User, utcnow
from testlab.services.errors import UserError


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def add_user(session: Session, name: str, *, admin: bool = False) -> str:
    """Create a user and return its new API token (the only time it is ever visible)."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"user name {name!r}: use letters, digits, '.', '-' and '_'")
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise UserError(f"user {name} already exists")
    token = secrets.token_urlsafe(32)
    session.add(User(name=name, is_admin=admin, token_hash=hash_token(token), created=utcnow()))
    return token


def authenticate(session: Session, token: str) -> User | None:
    # Looking the hash up is safe: timing reveals nothing about a token of 256 random bits.
    return session.scalars(select(User).where(User.token_hash == hash_token(token))).first()


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
