"""The engine's way into the database: fenced transactions on a thread of their own.

Every engine write runs through `EngineDatabase.write`: one transaction, on one dedicated thread
(blocking database calls never run on the event loop), that first checks the lease epoch (testlab/
engine/lease.py) and then does its work with conditional writes (testlab/db/session.py). A write based
on a stale read is run again on fresh data; a write by an engine that lost its lease raises LeaseLost
and changes nothing. Reads run as read-only transactions (one consistent snapshot).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sql_errors
from sqlalchemy.orm import Session

from testlab.db.session import is_sqlite, run_transaction
from testlab.engine import lease
from testlab.threads import DaemonThreadPool

T = TypeVar("T")


def is_database_outage(error: BaseException) -> bool:
    """The database could not be reached or answer (server down, network, a lock held too long):
    the engine waits for it to come back rather than treating it as a fault of any VM or task."""
    if isinstance(error, sql_errors.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sql_errors.OperationalError, sql_errors.InterfaceError))


def describe_outage(error: BaseException) -> str:
    """One line for the log: the driver's own first line, without SQL or parameters."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"


class EngineDatabase:
    def __init__(self, url: str) -> None:
        self.url = url
        self.epoch: int | None = None  # set once the lease is ours; every write checks it
        self._thread = DaemonThreadPool(1, "testlab-db")

    @property
    def actor(self) -> str:
        return f"engine {self.epoch}"

    async def write(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `work(session, *args, **kwargs)` in one fenced, conditional transaction."""
        return await self._on_thread(functools.partial(self._fenced, work, args, kwargs))

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(session, *args)` in one read-only transaction (a consistent snapshot)."""
        return await self._on_thread(functools.partial(self.read_here, work, *args))

    async def on_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(*args)` on the database thread, where it calls `read_here` and `write_here`
        for its transactions: one trip from the loop for several of them."""
        return await self._on_thread(functools.partial(work, *args))

    def read_here(self, work: Callable[..., T], *args: Any) -> T:
        """`read`, on the calling thread (the database thread: see `on_thread`)."""
        return run_transaction(self.url, lambda s: work(s, *args), readonly=True)

    def write_here(self, work: Callable[..., T], *args: Any, snapshot: bool = False) -> T:
        """`write`, on the calling thread (the database thread: see `on_thread`). `snapshot`: every
        read of the unit sees one state, as a read-only transaction's do; it is run again if a row it
        read changes before its commit (testlab/db/session.py)."""
        return self._fenced(work, args, {}, snapshot=snapshot)

    @property
    def reads_under_write_lock(self) -> bool:
        """SQLite: a writing transaction holds the database's one write lock from its first read."""
        return is_sqlite(self.url)

    async def _on_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._thread.submit(call))

    def _fenced(
        self, work: Callable[..., T], args: tuple, kwargs: dict[str, Any], *, snapshot: bool = False
    ) -> T:
        def unit(session: Session) -> T:
            if self.epoch is not None:
                lease.check(session, self.epoch)
            return work(session, *args, **kwargs)

        return run_transaction(
            self.url,
            unit,
            actor=self.actor,
            idle_in_transaction_ms=lease.ENGINE_IDLE_IN_TRANSACTION_MS,
            snapshot=snapshot,
        )

    def close(self) -> None:
        self._thread.shutdown(wait=False)
