"""The `options:` of a host in the lab file: backend settings, checked per backend.

Parsed into plain JSON data (the database stores them in a JSON column and hands them to the
backend as they are), with durations in seconds. Unknown keys for the host's backend are errors:
an option the backend would silently ignore is a typo or a misunderstanding.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testlab.domain.durations import format_duration
from testlab.domain.inputlimits import MAX_DOMAIN_NAME, MAX_LAB_DURATION, MAX_SNAPSHOT_NAMES
from testlab.domain.yamlsource import DOMAIN_NAME_PATTERN, DOMAIN_NAME_RULE, MapReader, describe

# The operations of a backend (testlab/hypervisor/base.py uses them as its OPERATIONS): each may get
# its own deadline under `timeouts`.
BACKEND_OPERATIONS = (
    "revert",
    "state",
    "power_on",
    "power_off",
    "list_snapshots",
    "create_snapshot",
    "health",
    "power_cycle",
    "agent_address",
    "ensure_domain",
)
HOST_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "local": ("agent_script", "spare_copies", "spare_boots", "boot_timeout", "timeouts"),
    "libvirt": ("shutdown_grace", "timeouts"),
    "command": ("snapshots", "timeouts"),
}
_DURATIONS = ("boot_timeout", "shutdown_grace")
_MAY_BE_ZERO = ("shutdown_grace",)  # 0: the guest is destroyed at once
_BOOLEANS = ("spare_copies", "spare_boots")


def parse_host_options(host: MapReader, backend: str, anchor: Path) -> dict[str, Any]:
    """The host's `options:` as plain data, e.g. {"spare_copies": False, "timeouts": {"revert": 600.0}}.

    A relative `agent_script` is relative to `anchor`, the lab file's directory."""
    reader = host.mapping("options")
    if reader is None:
        return {}
    allowed = HOST_OPTIONS[backend]
    if "commands" in reader.data:
        raise reader.error("commands", "commands is a key of the host itself, not an option")
    for key in reader.data:
        if key not in allowed:
            raise reader.error(
                key, f"unknown option for a {backend} host (allowed: {', '.join(sorted(allowed))})"
            )
    options: dict[str, Any] = {}
    for key in _BOOLEANS:
        if reader.has(key):
            value = reader.data[key]
            if not isinstance(value, bool):
                raise reader.error(key, f"expected true or false, got {describe(value)}")
            options[key] = value
    if reader.has("agent_script"):
        options["agent_script"] = reader.existing_file("agent_script", anchor)
    for key in _DURATIONS:
        if reader.has(key):
            options[key] = _duration(reader, key, zero=key in _MAY_BE_ZERO)
    if reader.has("timeouts"):
        options["timeouts"] = _timeouts(reader)
    if reader.has("snapshots"):
        options["snapshots"] = list(
            reader.string_list(
                "snapshots",
                non_empty=True,
                max_items=MAX_SNAPSHOT_NAMES,
                max_length=MAX_DOMAIN_NAME,
                check=_snapshot_problem,
            )
        )
    return options


def _timeouts(options: MapReader) -> dict[str, float]:
    reader = options.mapping("timeouts")
    assert reader is not None
    result: dict[str, float] = {}
    for key in reader.data:
        if key not in BACKEND_OPERATIONS:
            raise reader.error(key, f"unknown operation (allowed: {', '.join(sorted(BACKEND_OPERATIONS))})")
        result[key] = _duration(reader, key)
    return result


def _duration(reader: MapReader, key: str, *, zero: bool = False) -> float:
    seconds = reader.duration(key, 0.0, maximum=MAX_LAB_DURATION)
    if seconds <= 0 and not zero:
        raise reader.error(key, "must be more than 0")
    return seconds


def _snapshot_problem(name: str) -> str | None:
    if DOMAIN_NAME_PATTERN.fullmatch(name):
        return None
    return f"invalid snapshot name {name!r}: use {DOMAIN_NAME_RULE}"


def dump_host_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` in the lab file's own form (durations as text), for `dump_lab`."""
    result: dict[str, Any] = {}
    for key, value in options.items():
        if key in _DURATIONS:
            result[key] = format_duration(value)
        elif key == "timeouts":
            result[key] = {op: format_duration(seconds) for op, seconds in value.items()}
        elif key == "snapshots":
            result[key] = list(value)
        else:
            result[key] = value
    return result
