"""Command templates of hosts: their operations, their placeholders, and which templates are safe.

The lab-file parser and the backends' command runner (testlab/hypervisor/runner.py) share this
module, so that a template the parser accepts is one the runner takes, and the parser does not depend
on the hypervisor package.

The backend substitutes `{domain}`, `{snapshot}` and `{host}` shell-quoted; a template naming any
other placeholder is refused.
"""

from __future__ import annotations

import string

COMMAND_PLACEHOLDERS = ("domain", "snapshot", "host")
# A `command` host has no other way to drive its domains than these templates.
REQUIRED_COMMANDS = ("power_on", "power_off", "state", "revert")
OPTIONAL_COMMANDS = ("power_cycle", "health", "list_snapshots", "create_snapshot")
COMMAND_OPERATIONS = REQUIRED_COMMANDS + OPTIONAL_COMMANDS

_KNOWN = ", ".join(f"{{{name}}}" for name in COMMAND_PLACEHOLDERS)


def template_problem(template: str) -> str | None:
    """Why `template` cannot be used as a command template, or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        shown = "{" + name + "}"
        if name not in COMMAND_PLACEHOLDERS:
            return f"uses unknown placeholders: {shown} (known: {_KNOWN})"
        if spec or conversion:
            return f"placeholder {shown} takes no conversion or format; write {shown}"
    return None
