"""How statuses look in a terminal (Rich markup), shared by the command line and the demo."""

from __future__ import annotations

STATUS_STYLES = {
    "completed": "green",
    "idle": "green",
    "running": "cyan",
    "reverting": "yellow",
    "sleeping": "yellow",
    "queued": "white",
    "failed": "red",
    "boterror": "magenta",
    "timeout": "red",
    "offline": "magenta",
    "maintenance": "blue",
    "canceled": "dim",
    "skipped": "dim",
    "dirty": "yellow",
    "off": "dim",
}


def styled(status: str | None) -> str:
    if status is None:
        return ""
    style = STATUS_STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status
