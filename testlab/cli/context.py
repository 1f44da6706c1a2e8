"""What every command needs: the settings, and transactions on an up-to-date schema.

Commands that change something go through `write`, which runs their work as one conditional
transaction and runs it again on fresh rows when the engine (or another command) changed them in
between (docs/engine.md, "Concurrency"). Commands that only read use `database(readonly=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.orm import Session

from testlab.config import Settings, current_user, load_settings
from testlab.db.session import check_schema, run_transaction, session_scope

T = TypeVar("T")

__all__ = ["current_user", "database", "ready", "settings", "write"]


def settings() -> Settings:
    return load_settings()


def ready(current: Settings | None = None) -> Settings:
    """The settings, once the database's schema is known to be at head."""
    current = current or settings()
    check_schema(current.database_url)
    return current


@contextmanager
def database(current: Settings | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """A transaction on a schema at head; everything or nothing is written."""
    current = ready(current)
    with session_scope(current.database_url, readonly=readonly, actor=current_user()) as session:
        yield session


def write(work: Callable[[Session], T], current: Settings | None = None) -> T:
    """Run `work(session)` as one conditional transaction, again on fresh rows after a conflict."""
    current = ready(current)
    return run_transaction(current.database_url, work, actor=current_user())
