"""Charts drawn on the server as inline SVG: the activity timeline and the statistics' plots.

SVG from the server needs no JavaScript library, is readable before any script runs, scales with
the page and prints well. Colours come from the stylesheet (classes like `st-running`), so the
charts match the badges everywhere else.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from markupsafe import Markup, escape

from testlab.domain.durations import format_duration

LABEL_WIDTH = 150
LANE = 16
LANE_GAP = 5
HOST_GAP = 26
AXIS = 26


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.rstrip("Z"))


def _ticks(since: datetime, until: datetime) -> tuple[list[datetime], str]:
    span = (until - since).total_seconds()
    for step in (5, 10, 15, 30, 60, 300, 600, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400):
        if span / step <= 10:
            break
    first = datetime.fromtimestamp((since.timestamp() // step + 1) * step)
    ticks, tick = [], first
    while tick < until:
        ticks.append(tick)
        tick += timedelta(seconds=step)
    return ticks, "%H:%M:%S" if step < 60 else "%H:%M"


def timeline(data: dict, width: int = 1160) -> Markup:
    """Lanes of VMs grouped by host; a segment per status stretch, linked to its job when running;
    vertical marks where the engine started or a host was operated on."""
    since, until = _parse(data["since"]), _parse(data["until"])
    span = max(1.0, (until - since).total_seconds())
    plot = width - LABEL_WIDTH - 10

    def x(value: datetime) -> float:
        return LABEL_WIDTH + plot * max(0.0, min(1.0, (value - since).total_seconds() / span))

    parts: list[str] = []
    y = AXIS
    host = None
    for lane in data["vms"]:
        if lane["host"] != host:
            host = lane["host"]
            y += 6 if y > AXIS else 0
            parts.append(
                f'<text class="tl-host" x="4" y="{y + 12}">'
                f'<a href="/hosts/{escape(host)}">host {escape(host)}</a></text>'
            )
            y += HOST_GAP - 8
        parts.append(
            f'<text class="tl-vm" x="14" y="{y + LANE - 4}"><a href="/vms/{escape(lane["vm"])}">'
            f"{escape(lane['vm'])}</a></text>"
        )
        parts.append(f'<rect class="tl-lane" x="{LABEL_WIDTH}" y="{y}" width="{plot}" height="{LANE}"/>')
        for segment in lane["segments"]:
            if segment["status"] == "off":
                continue
            start, end = _parse(segment["start"]), _parse(segment["end"])
            left, right = x(start), x(end)
            seconds = (end - start).total_seconds()
            what = segment["status"]
            if segment.get("task"):
                what += f" task {segment['task']} (job {segment['job']})"
            title = f"{lane['vm']}: {what}, {start:%H:%M:%S}-{end:%H:%M:%S} ({format_duration(seconds)})"
            if segment.get("reason"):
                title += f" - {segment['reason']}"
            rect = (
                f'<rect class="seg st-{escape(segment["status"])}" x="{left:.1f}" y="{y}" '
                f'width="{max(1.0, right - left):.1f}" height="{LANE}"><title>{escape(title)}</title></rect>'
            )
            if segment.get("job"):
                rect = f'<a href="/jobs/{int(segment["job"])}">{rect}</a>'
            parts.append(rect)
        y += LANE + LANE_GAP
    height = y + 8
    labelled = -1000.0
    for mark in data["marks"]:
        at = x(_parse(mark["time"]))
        kind = "engine" if mark["kind"] == "engine" else "host"
        label = "engine start" if kind == "engine" else (mark.get("host") or "host")
        text = ""
        if at - labelled > 90:  # marks close together share the first one's label
            text = f'<text x="{min(at + 3, width - 80):.1f}" y="{AXIS - 9}">{escape(label)}</text>'
            labelled = at
        parts.append(
            f'<g class="mark mark-{kind}"><line x1="{at:.1f}" x2="{at:.1f}" y1="{AXIS - 6}" y2="{height}"/>'
            f"{text}<title>{escape(mark['time'])}: {escape(mark['reason'])}</title></g>"
        )
    axis = [f'<line class="axis" x1="{LABEL_WIDTH}" x2="{width - 10}" y1="{height}" y2="{height}"/>']
    ticks, label = _ticks(since, until)
    for tick in ticks:
        at = x(tick)
        axis.append(f'<line class="grid" x1="{at:.1f}" x2="{at:.1f}" y1="{AXIS}" y2="{height}"/>')
        axis.append(f'<text class="tick" x="{at:.1f}" y="{height + 14}">{tick.strftime(label)}</text>')
    svg = (
        f'<svg class="timeline" viewBox="0 0 {width} {height + 20}" width="100%" role="img" '
        f'aria-label="activity timeline">{"".join(axis)}{"".join(parts)}</svg>'
    )
    return Markup(svg)


def bars(items: list[tuple[str, float, str]], width: int = 540, unit: str = "%") -> Markup:
    """Horizontal bars for shares (0..1): (label, value, link)."""
    if not items:
        return Markup('<p class="empty">nothing in this window</p>')
    row, label = 20, 150
    plot = width - label - 60
    parts = []
    for index, (name, value, link) in enumerate(items):
        y = index * row
        length = plot * max(0.0, min(1.0, value))
        text = f"{value * 100:.0f}{unit}" if unit == "%" else f"{value:g}{unit}"
        parts.append(
            f'<text class="bar-label" x="{label - 8}" y="{y + 14}">'
            f'<a href="{escape(link)}">{escape(name)}</a></text>'
            f'<rect class="bar-track" x="{label}" y="{y + 3}" width="{plot}" height="{row - 6}"/>'
            f'<rect class="bar" x="{label}" y="{y + 3}" width="{length:.1f}" height="{row - 6}"/>'
            f'<text class="bar-value" x="{label + plot + 6}" y="{y + 14}">{text}</text>'
        )
    height = row * len(items)
    return Markup(f'<svg class="bars" viewBox="0 0 {width} {height}" width="100%">{"".join(parts)}</svg>')


def heat(buckets: list[str], rows: dict[str, list[int]], width: int = 1160) -> Markup:
    """Infrastructure errors per VM over time: one row of cells per VM, darker for more errors."""
    if not rows:
        return Markup('<p class="empty">no infrastructure error in this window</p>')
    label, cell_h = 150, 18
    columns = len(buckets)
    cell_w = (width - label - 10) / max(1, columns)
    peak = max(max(counts) for counts in rows.values()) or 1
    parts = []
    for index, (vm, counts) in enumerate(rows.items()):
        y = index * (cell_h + 3)
        parts.append(
            f'<text class="bar-label" x="{label - 8}" y="{y + 13}">'
            f'<a href="/vms/{escape(vm)}">{escape(vm)}</a></text>'
        )
        for column, count in enumerate(counts):
            level = 0 if count == 0 else 1 + min(3, int(3 * count / peak))
            parts.append(
                f'<rect class="heat heat-{level}" x="{label + column * cell_w:.1f}" y="{y}" '
                f'width="{cell_w - 2:.1f}" height="{cell_h}"><title>{escape(vm)}: {count} error(s) from '
                f"{escape(buckets[column])}</title></rect>"
            )
    y = len(rows) * (cell_h + 3)
    for column in range(0, columns, max(1, columns // 6)):
        parts.append(
            f'<text class="tick" x="{label + column * cell_w:.1f}" y="{y + 12}">'
            f"{_parse(buckets[column]):%H:%M}</text>"
        )
    return Markup(f'<svg class="heatmap" viewBox="0 0 {width} {y + 18}" width="100%">{"".join(parts)}</svg>')
