"""The engine's hot statements, compiled once per database and run straight on the driver.

A trivial task costs the engine about forty statements and six BEGINs (a round's read, a plan's
record, a revert's end, a task's start and end). Through SQLAlchemy's execution machinery each cost
20-40 us of Python (the session asked for its connection, the statement walked for its cache key, an
execution context, events, a result object) around 1-5 us of the driver's own: most of the engine's
database thread (docs/engine.md, "The loop"). A `Prepared` statement is a Core statement compiled
once per dialect into its SQL text, the order of its parameters with their type conversions
(SQLAlchemy's own, so a datetime, a boolean or a JSON column reads and writes as it does through the
ORM) and its result columns' conversions; it then runs on the driver connection of the session's
transaction.

What it keeps of SQLAlchemy's behaviour: the transaction is the session's (same connection, same
BEGIN), a driver error is raised as SQLAlchemy's wrapped exception (an outage is still an
OperationalError, a lost connection is invalidated), a write marks the transaction as having written
(so its commit wakes the engine: testlab/db/session.py), and `before_cursor_execute` listeners still
see each statement. What it leaves out: the other execution events, and statements it cannot
compile once (a parameter that expands into a list, `IN :names`; a column default filled in Python
at each run): those run through SQLAlchemy as before (`on_driver` says which).
"""

from __future__ import annotations

import collections
import keyword
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy import exc as sql_errors
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

_CONNECTION = "testlab_connection"  # session.info: the connection of its current transaction


@event.listens_for(Session, "after_begin")
def _remember_connection(session: Session, _transaction: Any, connection: Connection) -> None:
    session.info[_CONNECTION] = connection


@event.listens_for(Session, "after_transaction_end")
def _forget_connection(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_CONNECTION, None)


def connection_of(session: Session) -> Connection:
    """The connection of the session's transaction (begun if need be): `session.connection()`,
    remembered for the transaction, since asking the session each time cost more than a statement."""
    connection = session.info.get(_CONNECTION)
    if connection is None or connection.invalidated:
        connection = session.connection()
        session.info[_CONNECTION] = connection
    return connection


class Rows:
    """A statement's result: its rows (tuples whose fields are also attributes), its row count."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def all(self) -> list[Any]:
        return self.rows

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class _Form:
    """A statement as one dialect runs it: SQL text, parameters, result columns."""

    __slots__ = ("sql", "positional", "binds", "writes", "columns", "reading")

    def __init__(self, statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise NotImplementedError("column defaults computed at each run")
        self.sql = compiled.string
        self.positional = compiled.positional
        if compiled.positional:
            binds = [(name, compiled.binds[name]) for name in compiled.positiontup or ()]
        else:
            binds = [(name, bind) for bind, name in compiled.bind_names.items()]
        self.binds = []  # (name, key, required, fixed value, conversion)
        for name, bind in binds:
            if bind.expanding or bind.literal_execute or bind.callable is not None:
                raise NotImplementedError(f"{name}: a parameter compiled at each run")
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.binds.append((name, bind.key, bind.required, bind.value, convert))
        self.writes = bool(getattr(statement, "is_dml", False))
        self.columns = list(getattr(statement, "selected_columns", ()) or ())
        # The rows' type and conversions, known at the first run (one assignment: threads share it).
        self.reading: tuple[Any, list[tuple[int, Any]]] | None = None

    def arguments(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = []
        for _name, key, required, fixed, convert in self.binds:
            value = params[key] if required else params.get(key, fixed)
            values.append(value if convert is None or value is None else convert(value))
        if self.positional:
            return values
        return {name: value for (name, *_), value in zip(self.binds, values, strict=True)}

    def read_rows(self, cursor: Any, dialect: Dialect) -> list[Any]:
        if self.reading is None:
            self.reading = self._describe(cursor.description, dialect)
        row_type, processors = self.reading
        fetched = cursor.fetchall()
        make = row_type._make
        if not processors:
            return [make(row) for row in fetched]
        rows = []
        for raw in fetched:
            row = list(raw)
            for index, convert in processors:
                if row[index] is not None:
                    row[index] = convert(row[index])
            rows.append(make(row))
        return rows

    def _describe(self, description: Sequence[Any], dialect: Dialect) -> tuple[Any, list[tuple[int, Any]]]:
        """Result conversions, as SQLAlchemy picks them: from each column's type and the type code
        the driver reports for it (PostgreSQL's numbers depend on it)."""
        processors = []
        for index, column in enumerate(description):
            if index < len(self.columns):
                convert = self.columns[index].type.dialect_impl(dialect).result_processor(dialect, column[1])
                if convert is not None:
                    processors.append((index, convert))
        return _row_type([column[0] for column in description]), processors


def _row_type(names: list[str]) -> type:
    fields = [
        name if name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") else f"c{i}"
        for i, name in enumerate(names)
    ]
    if len(set(fields)) != len(fields):
        fields = [f"c{i}" for i in range(len(fields))]
    base = collections.namedtuple("Row", fields)  # noqa: PYI024 - built at run time from the columns

    class Row(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(self._fields, self, strict=True))

    return Row


class Prepared:
    """A Core statement run straight on the driver (see the module's docstring); one per statement,
    built once at import like the statement itself."""

    __slots__ = ("statement", "_forms", "_insert_keys")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._forms: dict[tuple[str, str, tuple[str, ...] | None], _Form | None] = {}
        # An INSERT compiles for the columns its rows give (the same ones every time, here).
        self._insert_keys = bool(getattr(statement, "is_insert", False))

    def execute(self, session: Session, params: Mapping[str, Any] | None = None) -> Rows:
        """Run it once with these parameters (by the keys of its bind parameters or, for an INSERT,
        its columns) in the session's transaction."""
        return self._run(session, params or {}, None)

    def execute_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run it once per set of parameters (an INSERT of several rows) in one call of the driver;
        returns the row count."""
        if not rows:
            return 0
        return self._run(session, rows[0], rows).rowcount

    def on_driver(self, dialect: Dialect, params: Mapping[str, Any] | None = None) -> bool:
        """Whether it runs straight on the driver of this dialect (else through SQLAlchemy)."""
        return self._form(dialect, params or {}) is not None

    def _form(self, dialect: Dialect, params: Mapping[str, Any]) -> _Form | None:
        keys = tuple(params) if self._insert_keys else None
        form_key = (dialect.name, dialect.driver, keys)
        try:
            return self._forms[form_key]
        except KeyError:
            try:
                form = _Form(self.statement, dialect, keys)
            except NotImplementedError:
                form = None
            self._forms[form_key] = form
            return form

    def _run(
        self, session: Session, params: Mapping[str, Any], many: Sequence[Mapping[str, Any]] | None
    ) -> Rows:
        connection = connection_of(session)
        dialect = connection.dialect
        form = self._form(dialect, params)
        if form is None:
            result = connection.execute(self.statement, list(many) if many is not None else dict(params))
            return Rows(result.all() if result.returns_rows else [], result.rowcount)
        arguments: Any = [form.arguments(p) for p in many] if many is not None else form.arguments(params)
        driver_connection = connection.connection.dbapi_connection
        cursor = driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if connection.dispatch.before_cursor_execute:
                for listener in connection.dispatch.before_cursor_execute:
                    listener(connection, cursor, form.sql, arguments, None, many is not None)
            if many is not None:
                cursor.executemany(form.sql, arguments)
            else:
                cursor.execute(form.sql, arguments)
            if form.writes:
                connection.info["wrote"] = True
            rows = form.read_rows(cursor, dialect) if cursor.description else []
            return Rows(rows, cursor.rowcount)
        except dialect.loaded_dbapi.Error as error:
            raise _wrapped(connection, cursor, form.sql, arguments, error) from error
        finally:
            cursor.close()


def run_on_driver(connection: Connection, sql: str) -> None:
    """Run a statement without parameters or rows (BEGIN) on the connection's driver; its error is
    SQLAlchemy's, as for a prepared statement."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _wrapped(connection, cursor, sql, (), error) from error
    finally:
        cursor.close()


def _wrapped(
    connection: Connection, cursor: Any, sql: str, arguments: Any, error: Exception
) -> sql_errors.DBAPIError:
    """The driver's error as SQLAlchemy raises it; a lost connection is invalidated, as SQLAlchemy
    does, so the session's rollback and the next transaction do not use it again."""
    dialect = connection.dialect
    lost = dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor)
    wrapped = sql_errors.DBAPIError.instance(
        sql,
        arguments,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
    if lost:
        connection.invalidate(error)
    return wrapped
