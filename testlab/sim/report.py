"""The report of a comparison: one column per run, one row per measure, and the `--json` object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testlab.sim.runner import Run

# (label, summary key, kind): kind "time" prints a duration, "share" a percentage.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("queue wait p50", "wait_p50", "time"),
    ("queue wait p90", "wait_p90", "time"),
    ("queue wait p99", "wait_p99", "time"),
    ("turnaround p50", "turnaround_p50", "time"),
    ("turnaround p90", "turnaround_p90", "time"),
    ("busy", "busy", "share"),
    ("revert time share", "revert_share", "share"),
    ("reverts (wasted)", "reverts", "reverts"),
    ("makespan", "makespan", "time"),
    ("lower bound", "lower_bound", "time"),
    ("makespan / bound", "makespan_ratio", "ratio"),
    ("most loaded", "bottleneck", "text"),
)
# Keys of the --json object, per run (seconds for times, fractions for shares).
JSON_KEYS = (
    "jobs_submitted",
    "jobs_done",
    "jobs_unfinished",
    "jobs_completed",
    "jobs_boterror",
    "wait_p50",
    "wait_p90",
    "wait_p99",
    "turnaround_p50",
    "turnaround_p90",
    "turnaround_p99",
    "busy",
    "revert_share",
    "makespan",
    "lower_bound",
    "makespan_ratio",
    "critical_path_bound",
    "capacity_bound",
    "bottleneck",
    "reverts",
    "wasted_reverts",
    "revert_failures",
    "vm_breaks",
    "host_crashes",
    "requeued",
    "blocked",
    "templates",
    "plan_calls",
    "events",
    "wall_seconds",
)


def human(seconds: float | None) -> str:
    """A duration as people read a report: 47s, 12m30s, 3h05m, 2d04h10m."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if 0 < seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h{(s % 3600) // 60:02d}m"


def cell(summary: Mapping[str, Any], key: str, kind: str) -> str:
    value = summary.get(key)
    if kind == "time":
        return human(value)
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "ratio":
        return "-" if value is None else f"{value:.3f}"
    if kind == "text":
        return str(value or "-")
    return f"{summary['reverts']} ({summary['wasted_reverts']})"


def table_rows(runs: Mapping[str, Run]) -> list[list[str]]:
    rows = [
        ["jobs done"] + [f"{r.summary['jobs_done']}/{r.summary['jobs_submitted']}" for r in runs.values()]
    ]
    rows += [[label] + [cell(r.summary, key, kind) for r in runs.values()] for label, key, kind in ROWS]
    faults = ("revert_failures", "vm_breaks", "host_crashes", "requeued")
    if any(r.summary[k] for r in runs.values() for k in faults):
        rows.append(
            ["faults (revert/vm/host/requeued)"]
            + ["/".join(str(r.summary[k]) for k in faults) for r in runs.values()]
        )
    return rows


def json_report(runs: Mapping[str, Run]) -> dict[str, dict[str, Any]]:
    return {name: {key: run.summary[key] for key in JSON_KEYS} for name, run in runs.items()}


def notes(runs: Mapping[str, Run]) -> list[str]:
    """What the table cannot show: unfinished jobs and why."""
    lines = []
    for name, run in runs.items():
        s = run.summary
        if s["jobs_unfinished"]:
            why = "; ".join(f"{vm}: {reason}" for vm, reason in list(s["blocked"].items())[:3])
            lines.append(f"{name}: {s['jobs_unfinished']} job(s) never ended" + (f" ({why})" if why else ""))
    return lines
