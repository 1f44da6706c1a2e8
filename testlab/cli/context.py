"""What every command needs: the settings and a database session on an up-to-date schema."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from testlab.config import Settings, load_settings
from testlab.db.session import check_schema, session_scope


def settings() -> Settings:
    return load_settings()


@contextmanager
def database(current: Settings | None = None) -> Iterator[Session]:
    """A transaction on a schema at head; everything or nothing is written."""
    current = current or settings()
    check_schema(current.database_url)
    with session_scope(current.database_url) as session:
        yield session


def current_user() -> str:
    return os.environ.get("TESTLAB_USER") or getpass.getuser()
