"""Versioned rows read and written with plain statements, for the engine's hot paths.

Every task costs the engine a revert's end, a task's start and a task's end. As ORM objects, each
of these spent several times more CPU loading, tracking and flushing its few rows than running
its statements (docs/engine.md, "The loop"). An `EditableRow` is a row read with a plain select and
changed by assigning its attributes, as an ORM object is, so the one status-change function
(testlab/services/transitions.py) works on either. `save` writes only the changed columns, with
the same conditional write the ORM makes for versioned rows (testlab/db/session.py): `WHERE id =
:id AND version = :read`, the version bumped, and StaleDataError when the row moved on, so the
transaction runs again on fresh rows.

A transaction uses either an ORM object or an editable row for a given row, never both: each would
write its own version over the other's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from testlab.db.prepared import Prepared


class EditableRow:
    """One row of a versioned table: attributes are its columns; assigning one marks it changed."""

    __slots__ = ("_table", "_values", "_changed")

    def __init__(self, table: Table, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_changed", set())

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._table.name} has no column {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"{self._table.name} has no column {name!r}")
        if name == "version":
            raise AttributeError("the version changes only when the row is saved")
        if self._values[name] == value:
            return  # as with an ORM object: assigning what is there already changes nothing
        self._values[name] = value
        self._changed.add(name)

    def __repr__(self) -> str:
        return f"<{self._table.name} {self._values.get('id')}>"

    @property
    def table_name(self) -> str:
        return self._table.name

    def save(self, session: Session) -> None:
        """Write the changed columns if the row is still the version read (else StaleDataError)."""
        if not self._changed:
            return
        columns = frozenset(self._changed)
        read = self._values["version"]
        params = {f"new_{name}": self._values[name] for name in columns}
        params.update(row_id=self._values["id"], read_version=read, new_version=read + 1)
        result = _update_of(self._table, columns).execute(session, params)
        if result.rowcount != 1:
            raise StaleDataError(
                f"{self._table.name} row {self._values['id']} changed since it was read (version {read})"
            )
        self._values["version"] = read + 1
        self._changed.clear()


def load_rows(
    session: Session, statement: Prepared, params: dict[str, Any] | None = None
) -> list[EditableRow]:
    """The rows a select of one versioned table's columns returns, as editable rows."""
    table = statement.statement.selected_columns[0].table  # type: ignore[attr-defined]
    return [EditableRow(table, row._asdict()) for row in statement.execute(session, params)]


def load_row(
    session: Session, statement: Prepared, params: dict[str, Any] | None = None
) -> EditableRow | None:
    rows = load_rows(session, statement, params)
    return rows[0] if rows else None


def save_rows(session: Session, rows: Iterable[EditableRow | None]) -> None:
    for row in rows:
        if row is not None:
            row.save(session)


# One UPDATE per (table, set of changed columns), built once: a statement built anew is walked for
# its cache key at every run.
_UPDATES: dict[tuple[str, frozenset[str]], Prepared] = {}


def _update_of(table: Table, columns: frozenset[str]) -> Prepared:
    key = (table.name, columns)
    statement = _UPDATES.get(key)
    if statement is None:
        statement = Prepared(
            update(table)
            .where(table.c.id == bindparam("row_id"), table.c.version == bindparam("read_version"))
            .values(
                {**{name: bindparam(f"new_{name}") for name in columns}, "version": bindparam("new_version")}
            )
        )
        _UPDATES[key] = statement
    return statement


def split_row(row: Any, tables: tuple[Table, ...]) -> list[EditableRow]:
    """A row of a select of several whole tables (`select(a, b)`), as one editable row per table:
    their columns share names (id, status), so they are taken by position."""
    rows, start = [], 0
    for table in tables:
        keys = table.columns.keys()
        rows.append(EditableRow(table, dict(zip(keys, row[start : start + len(keys)], strict=True))))
        start += len(keys)
    return rows
