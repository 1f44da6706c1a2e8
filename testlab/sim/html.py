"""The HTML report: the comparison table and plots, in one self-contained file to keep or mail.

Plots are drawn with matplotlib (imported here only, so the rest of the simulator and the CLI start
fast) and embedded as PNG data, so the file needs nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from testlab.sim.report import notes, table_rows
from testlab.sim.runner import Run


def write_html(path: Path, runs: Mapping[str, Run], title: str, header: Sequence[str] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [
        ("Job turnaround", _turnaround(plt, runs)),
        ("Tasks waiting", _series(plt, runs, "queued", "tasks waiting")),
        ("VMs running a task", _series(plt, runs, "running", "VMs running")),
        ("Running time per host", _hosts(plt, runs)),
    ]
    names = list(runs)
    rows = table_rows(runs)
    table = "<table><tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    for row in rows:
        table += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
    table += "</table>"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}pre{background:#f6f6f6;padding:.5em}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    if header:
        parts.append("<pre>" + html.escape("\n".join(header)) + "</pre>")
    parts.append(table)
    for line in notes(runs):
        parts.append(f"<p>{html.escape(line)}</p>")
    for caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        caption = html.escape(caption)
        parts.append(f"<h2>{caption}</h2><img alt='{caption}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def _png(plt, figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _turnaround(plt, runs: Mapping[str, Run]) -> bytes:
    """The distribution of job turnarounds, one curve per run: lower and further left is better."""
    figure, axes = plt.subplots(figsize=(8, 4))
    for name, run in runs.items():
        values = sorted((j.ended - j.submitted) / 60 for j in run.result.jobs if j.ended is not None)
        if values:
            axes.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
    axes.set_xlabel("turnaround (minutes)")
    axes.set_ylabel("share of jobs")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(plt, figure)


def _series(plt, runs: Mapping[str, Run], attribute: str, label: str) -> bytes:
    figure, axes = plt.subplots(figsize=(8, 3.5))
    for name, run in runs.items():
        samples = run.result.samples
        axes.step(
            [s.time / 3600 for s in samples],
            [getattr(s, attribute) for s in samples],
            label=name,
            where="post",
        )
    axes.set_xlabel("simulated time (hours)")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(plt, figure)


def _hosts(plt, runs: Mapping[str, Run]) -> bytes:
    """Share of each host's running slots in use, per run: where the lab is short of capacity."""
    figure, axes = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(len(runs), 1)
    for index, (name, run) in enumerate(runs.items()):
        limits = {h.name: h.limits.max_running for h in run.spec.lab.hosts}
        makespan = run.summary["makespan"] or run.result.end or 1.0
        hosts = list(limits)[:60]
        values = [
            run.result.clock.host_running.get(h, 0.0) / (limits[h] * makespan) if limits[h] else 0.0
            for h in hosts
        ]
        axes.bar([i + index * width for i in range(len(hosts))], values, width=width, label=name)
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(hosts))], hosts, rotation=90, fontsize=7)
    axes.set_ylabel("busy share")
    axes.legend()
    return _png(plt, figure)
