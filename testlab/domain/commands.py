"""Command templates of hosts: their operations, their placeholders, and which templates are safe.

The lab-file parser and the backends' command runner (testlab/hypervisor/runner.py) share this
module, so that a template the parser accepts is one the runner takes, and the parser does not depend
on the hypervisor package.

The backend substitutes `{domain}`, `{snapshot}` and `{host}` already shell-quoted (`'win 10'`). A
placeholder that the template quotes again (`'{domain}'`, `"{host}"`) or escapes (`\\{domain}`)
turns that quoting inside out: the value would then be read by the shell unquoted, and a `$(...)`
in it would run. Such templates are refused, as are placeholders the backend does not know.
"""

from __future__ import annotations

import string

COMMAND_PLACEHOLDERS = ("domain", "snapshot", "host")
# A `command` host has no other way to drive its domains than these templates.
REQUIRED_COMMANDS = ("power_on", "power_off", "state", "revert")
OPTIONAL_COMMANDS = ("power_cycle", "health", "list_snapshots", "create_snapshot")
COMMAND_OPERATIONS = REQUIRED_COMMANDS + OPTIONAL_COMMANDS
# What each backend runs through a command: the others do the rest themselves, and only power-cycle
# a frozen hypervisor through its BMC or PDU (each backend's `command_operations`).
BACKEND_COMMANDS = {
    "command": COMMAND_OPERATIONS,
    "local": ("power_cycle",),
    "libvirt": ("power_cycle",),
}

_QUOTE_NAMES = {"'": "single", '"': "double"}
_KNOWN = ", ".join(f"{{{name}}}" for name in COMMAND_PLACEHOLDERS)


def template_problem(template: str) -> str | None:
    """Why `template` cannot be used as a command template, or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"
    quotes = _QuoteState()
    for literal, name, spec, conversion in parts:
        quotes.feed(literal)
        if name is None:
            continue
        shown = "{" + name + "}"
        if name not in COMMAND_PLACEHOLDERS:
            return f"uses unknown placeholders: {shown} (known: {_KNOWN})"
        if spec or conversion:
            return f"placeholder {shown} takes no conversion or format; write {shown}"
        if quotes.open is not None:
            quote = _QUOTE_NAMES[quotes.open]
            return (
                f"placeholder {shown} is inside {quote} quotes: it is substituted shell-quoted already, "
                f"and quoting it again unquotes it; remove the quotes around it"
            )
        if quotes.escaped:
            return f"placeholder {shown} follows a backslash, which would undo its quoting"
        if literal.endswith("$"):
            return f"placeholder {shown} follows '$', which would change its quoting"
    return None


class _QuoteState:
    """Which shell quote is open at the end of the text fed so far (POSIX sh rules, no nesting)."""

    def __init__(self) -> None:
        self.open: str | None = None  # "'" or '"'
        self.escaped = False  # the last character was an unquoted or double-quoted backslash

    def feed(self, text: str) -> None:
        for ch in text:
            if self.open == "'":
                if ch == "'":
                    self.open = None
            elif self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif self.open == '"':
                if ch == '"':
                    self.open = None
            elif ch in "'\"":
                self.open = ch
