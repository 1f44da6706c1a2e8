"""The one error type of definition files (lab files, job files).

Users fix their own files from this message alone, so it always carries where the problem is
(file, line, field) and what was expected, on one line, and never becomes a traceback.
"""

from __future__ import annotations

import unicodedata


class DefinitionError(Exception):
    """A lab or job definition is invalid: a user error, never an infrastructure one.

    `str(error)` reads "jobs/build.yaml:12: steps[1].timeout: expected a duration ..."; parts that
    are unknown are left out. `line` is 1-based.
    """

    def __init__(
        self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.line = line
        self.field = field

    def __str__(self) -> str:
        where = ""
        if self.source is not None and self.line is not None:
            where = f"{self.source}:{self.line}: "
        elif self.source is not None:
            where = f"{self.source}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        field = f"{self.field}: " if self.field else ""
        return _one_line(f"{where}{field}{self.message}")

    def __reduce__(self):  # keep keyword-only attributes when pickled (e.g. across processes)
        return (_rebuild, (self.message, self.source, self.line, self.field))


def _one_line(text: str) -> str:
    """Control characters escaped: a file name or key holding a newline must not split the message."""
    if all(ch.isprintable() or ch == " " for ch in text):
        return text
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def _rebuild(message: str, source: str | None, line: int | None, field: str | None) -> DefinitionError:
    return DefinitionError(message, source=source, line=line, field=field)
