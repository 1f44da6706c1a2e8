"""How much a definition file may hold, and which characters its strings may contain.

Every limit is checked by the parser, so that a file is refused with a `FILE:LINE: FIELD:` line
instead of failing later: in the database (SQLite and PostgreSQL disagree about NULs, string
lengths and integer ranges, and "a file one accepts, all accept"), when a command is started on a
VM (the kernel refuses NULs and arguments over 128 KiB), or by taking minutes to submit or cancel.
docs/files.md ("Limits") lists them; keep the two in step.
"""

from __future__ import annotations

import unicodedata

KIB = 1024
MIB = 1024 * KIB

# Files are read whole before parsing: the cap comes first, so /dev/zero cannot be read forever.
MAX_JOB_FILE_BYTES = 1 * MIB
MAX_LAB_FILE_BYTES = 4 * MIB  # a lab of 10,000 VMs takes about 1.2 MiB
MAX_NESTING = 32  # mappings and lists inside each other; real files need 5
MAX_NUMBER_CHARACTERS = 100  # longer literals are refused before Python converts them

# Integers go to database columns: INTEGER (signed 32-bit) or BIGINT (signed 64-bit).
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# String lengths in characters. Names fit their columns (String(100), String(200), String(500)).
MAX_NAME = 100  # hosts, VMs, steps, labels
MAX_JOB_NAME = 200
MAX_DOMAIN_NAME = 128  # domains and snapshots: the rule every backend accepts, see labfile.py
MAX_LINE = 500  # other one-line strings: URIs, agent URLs, paths, patterns
MAX_TEXT = 16 * KIB  # descriptions, `run`, command templates, each environment value
# The command, its environment and the engine's request to the agent stay well inside the agent's
# 1 MiB request limit and the kernel's 128 KiB per argument, whatever the characters.
MAX_ENV_TOTAL = 32 * KIB  # names and values of one step's environment together

# Counts.
MAX_HOSTS = 1_000
MAX_VMS = 10_000  # the scheduler is measured up to 10,000 VMs
MAX_STEPS = 1_000
MAX_TASKS = 10_000  # per job, once label selections are resolved against the lab
MAX_LABELS = 100  # per VM and per step
MAX_FILES = 1_000  # per step
MAX_ARTIFACTS = 100  # patterns per step
MAX_SNAPSHOT_NAMES = 1_000  # `snapshots` option of a command host

# Durations in seconds.
MAX_STEP_TIMEOUT = 24 * 3600.0
MAX_LAB_DURATION = 24 * 3600.0  # sleep_after_revert, backend timeouts, boot_timeout

_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def text_problem(value: str, *, max_length: int, one_line: bool) -> str | None:
    """Why `value` cannot be stored or passed on as it is, or None.

    NUL is refused everywhere: PostgreSQL cannot store it and no command can receive it. One-line
    fields (names, URIs, paths) refuse every control character, line breaks included, so that they
    print on one line in listings and messages.
    """
    if len(value) > max_length:
        return f"too long: {len(value):,} characters (at most {max_length:,})"
    if "\x00" in value:
        return "must not contain NUL characters"
    if one_line:
        if any(ch in _LINE_BREAKS for ch in value):
            return f"must be a single line, got {preview(value)}"
        control = next((ch for ch in value if unicodedata.category(ch) == "Cc"), None)
        if control is not None:
            return f"must not contain control characters ({control!r}), got {preview(value)}"
    return None


def integer_problem(value: int, low: int, high: int) -> str | None:
    """Why an integer does not fit its range (usually its database column), or None."""
    if low <= value <= high:
        return None
    if low == 0:
        return f"expected an integer from 0 to {high}, got {preview(value)}"
    return f"expected an integer from {low} to {high}, got {preview(value)}"


def preview(value: object, width: int = 60) -> str:
    """`repr(value)`, shortened: a message quoting a 50 MB string must still be one short line."""
    text = repr(value)
    if len(text) <= width:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} digits"
    return f"{text[: width - 1]}… ({size})"
