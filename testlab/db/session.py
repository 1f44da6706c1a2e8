"""Database connections and transactions: the rules every writer (engine, CLI, web) follows.

- **Real transactions.** On SQLite, pysqlite's own transaction handling sends no BEGIN before the
  first write, so two reads of one "transaction" could see another process's commit in between. We
  emit BEGIN ourselves: `BEGIN IMMEDIATE` for writing transactions (they take the write lock at once,
  so what they read cannot change before they write) and a deferred `BEGIN` for read-only ones (a
  consistent snapshot in WAL mode). On PostgreSQL, read-only transactions run at REPEATABLE READ so a
  multi-query read (the scheduler's snapshot) sees one state.
- **Conditional writes.** Rows that several processes change carry a version (testlab/db/models.py);
  every ORM UPDATE says `WHERE id = :id AND version = :read`. A write based on a stale read changes
  nothing and raises; `run_transaction` runs the whole unit of work again on fresh data.
- **Files follow the commit.** `after_commit` registers file changes that must only happen once the
  rows describing them are committed; a rolled-back transaction drops them.
- **Writers wake the engine.** A transaction that wrote anything announces itself once it is
  committed and its file changes are done (testlab/db/wakeup.py), so the engine acts at once instead
  of learning of it by polling.

SQLite runs in WAL mode with a busy timeout so the engine and any number of CLI commands can share the file.
Every command checks that the schema is at the migrations' head before touching data.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from testlab.db import wakeup
from testlab.db.prepared import connection_of, run_on_driver

log = logging.getLogger("testlab.db")

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration. Every command checks the database against it; a test keeps it equal to the
# head of the migration scripts, so commands need not load Alembic (a sixth of their start-up time).
SCHEMA_HEAD = "0008"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_STATEMENT_TIMEOUT_MS = 60_000
CONFLICT_ATTEMPTS = 8

T = TypeVar("T")


class SchemaOutOfDate(Exception):
    """The database is missing or older than this version of testlab."""


class Conflict(Exception):
    """The rows a unit of work read kept changing under it: it was retried and gave up."""


def _sqlite_connect(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def tune(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves (see the module docstring)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return tune


def _sqlite_begin(connection: Any) -> None:
    """BEGIN on the driver (as testlab/db/prepared.py runs the engine's statements): every
    transaction sends one, and SQLAlchemy's execution of it cost more than the rest of a short one."""
    mode = connection.get_execution_options().get("testlab_sqlite_begin", "IMMEDIATE")
    run_on_driver(connection, _BEGIN[mode])


_BEGIN = {mode: f"BEGIN {mode}" for mode in ("IMMEDIATE", "DEFERRED")}


_ENGINES: dict[tuple[str, int, int | None], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(
    url: str, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, idle_in_transaction_ms: int | None = None
) -> Engine:
    """One engine per URL (and SQLite busy timeout: the engine's lease uses a short one; and on
    PostgreSQL, how long the server lets a session sit idle inside a transaction before ending it,
    which the testlab engine bounds: see testlab/engine/lease.py)."""
    key = (url, busy_timeout_ms, idle_in_transaction_ms)
    engine = _ENGINES.get(key)
    if engine is None:
        with _ENGINES_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = _ENGINES[key] = _new_engine(url, busy_timeout_ms, idle_in_transaction_ms)
    return engine


def dispose_engines(url: str) -> None:
    """Close the pooled connections of every engine of `url` (the engines stay usable): a process
    done with one of many databases (the test suite makes one per test) must not keep them open until
    the server refuses new clients."""
    for (engine_url, _, _), engine in list(_ENGINES.items()):
        if engine_url == url:
            engine.dispose()


def _new_engine(url: str, busy_timeout_ms: int, idle_in_transaction_ms: int | None) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
        event.listen(engine, "connect", _sqlite_connect(busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "begin", _track_writes)
        event.listen(engine, "after_cursor_execute", _wrote)
    else:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": 10,
                # A vanished server must not hang a call for ever: probe idle links, bound statements.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
                + (
                    f" -c idle_in_transaction_session_timeout={idle_in_transaction_ms}"
                    if idle_in_transaction_ms
                    else ""
                ),
            },
        )
        event.listen(engine, "begin", _track_writes)
        event.listen(engine, "after_cursor_execute", _wrote)
    return engine


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


@cache
def _sessions(
    url: str, readonly: bool, busy_timeout_ms: int, idle_in_transaction_ms: int | None, snapshot: bool = False
) -> sessionmaker[Session]:
    engine = get_engine(url, busy_timeout_ms, idle_in_transaction_ms)
    if readonly:
        if is_sqlite(url):
            bind = engine.execution_options(testlab_sqlite_begin="DEFERRED")
        else:
            bind = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    elif snapshot and not is_sqlite(url):  # SQLite's writer holds the write lock: one state already
        bind = engine.execution_options(isolation_level="REPEATABLE READ")
    else:
        bind = engine
    return sessionmaker(bind, expire_on_commit=False)


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` (a file change) once this session's transaction is committed; never if it is not."""
    session.info.setdefault("after_commit", []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    session.info.pop("on_rollback", None)
    for action in session.info.pop("after_commit", []):
        try:
            action()
        except Exception as error:  # noqa: BLE001 - the rows are committed; start-up cleanup finishes it
            log.warning("after the commit: %s: %s", type(error).__name__, error)


def on_rollback(session: Session, action: Callable[[], None]) -> None:
    """Run `action` (undoing a file change made for this transaction) if it is rolled back."""
    session.info.setdefault("on_rollback", []).append(action)


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is not None:
        return  # a savepoint or inner transaction: the outer one decides
    session.info.pop("after_commit", None)
    for action in session.info.pop("on_rollback", []):
        try:
            action()
        except Exception as error:  # noqa: BLE001 - leftovers are removed by the start-up clean-up
            log.warning("after the rollback: %s: %s", type(error).__name__, error)


def _track_writes(connection: Any) -> None:
    """Note on the connection whether its transaction wrote anything (checked before the commit)."""
    connection.info["wrote"] = False


def _wrote(
    connection: Any, _cursor: Any, _statement: Any, _parameters: Any, context: Any, _many: bool
) -> None:
    if context is not None and (context.isinsert or context.isupdate or context.isdelete):
        connection.info["wrote"] = True


def _wrote_anything(session: Session) -> bool:
    """Whether the session's transaction wrote anything, its pending changes flushed first."""
    if not session.in_transaction():
        return False
    session.flush()
    return bool(connection_of(session).info.get("wrote"))


def _announce(url: str, session: Session) -> None:
    """Wake the engine (testlab/db/wakeup.py): the transaction wrote and is committed."""
    actor = session.info.get("actor")
    if not wakeup.announces(actor):
        return
    if is_sqlite(url):
        wakeup.poke(url, actor)
    else:
        wakeup.notify(get_engine(url), actor)


@contextmanager
def session_scope(
    url: str,
    *,
    readonly: bool = False,
    actor: str | None = None,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    idle_in_transaction_ms: int | None = None,
    snapshot: bool = False,
) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error (no partial writes).

    `actor` is recorded with every event the transaction writes (who changed what). Once committed,
    a transaction that wrote anything wakes the engine. `snapshot`: a writing transaction whose
    reads must all see one state (PostgreSQL runs it at REPEATABLE READ: a row another transaction
    changed since then cannot be written, and `run_transaction` runs the work again)."""
    session = _sessions(url, readonly, busy_timeout_ms, idle_in_transaction_ms, snapshot)()
    if actor is not None:
        session.info["actor"] = actor
    try:
        yield session
        wrote = not readonly and _wrote_anything(session)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    if wrote:
        _announce(url, session)


# PostgreSQL rolled the whole transaction back: a deadlock's victim, or a serialization failure.
_ROLLED_BACK_BY_SERVER = frozenset({"40P01", "40001"})


def _rolled_back_by_server(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) in _ROLLED_BACK_BY_SERVER


def run_transaction(
    url: str,
    work: Callable[[Session], T],
    *,
    readonly: bool = False,
    actor: str | None = None,
    attempts: int = CONFLICT_ATTEMPTS,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    idle_in_transaction_ms: int | None = None,
    snapshot: bool = False,
) -> T:
    """Run `work(session)` in one transaction; when a conditional write finds that a row it read has
    moved on, or PostgreSQL chose it as a deadlock's victim (two writers locking rows in opposite
    orders: a job's cancel and the engine starting one of its tasks), roll back and run it again from
    scratch on fresh data. Raises Conflict after `attempts`."""
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(
                url,
                readonly=readonly,
                actor=actor,
                busy_timeout_ms=busy_timeout_ms,
                idle_in_transaction_ms=idle_in_transaction_ms,
                snapshot=snapshot,
            ) as session:
                return work(session)
        except (StaleDataError, DBAPIError) as error:
            if isinstance(error, DBAPIError) and not _rolled_back_by_server(error):
                raise
            if attempt == attempts:
                raise Conflict(
                    f"the data kept changing under this change ({attempts} tries): "
                    f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
                ) from None
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
    raise AssertionError("unreachable")


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The head of the migration scripts (slow: loads Alembic and every script)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    with get_engine(url).execution_options(testlab_sqlite_begin="DEFERRED").connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str) -> None:
    """Bring the schema to the latest migration (creating it if needed).

    On SQLite, rebuilding a table that others reference needs foreign keys off for the duration
    (a pragma that only works outside a transaction); they are checked before the commit."""
    from alembic import command

    config = alembic_config(url)
    engine = get_engine(url)
    with engine.connect() as connection:
        raw = connection.connection.driver_connection if is_sqlite(url) else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if raw is not None:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def check_schema(url: str) -> None:
    current = current_revision(url)
    if current != SCHEMA_HEAD:
        state = "has no testlab schema" if current is None else f"schema is at {current}, not {SCHEMA_HEAD}"
        raise SchemaOutOfDate(f"the database {state}: run `testlab init`")
