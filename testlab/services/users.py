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
