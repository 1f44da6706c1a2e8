"""`testlab sim LAB WORKLOAD`: simulate a workload on a lab and compare policies; `testlab sim
export-workload`: derive a workload from the history of this lab's database."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from testlab.cli.output import console, print_json
from testlab.domain.durations import parse_duration
from testlab.services.errors import UserError


def register(cli: click.Group) -> None:
    cli.add_command(sim)


class _DefaultRun(click.Group):
    """`testlab sim LAB WORKLOAD ...` runs a simulation; named subcommands do the rest."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultRun)
def sim() -> None:
    """Capacity simulator: replay a workload against a lab in virtual time.

    \b
    testlab sim LAB.yaml WORKLOAD.yaml [--compare fifo] [--what-if 'host h1 max_running=2']
    testlab sim export-workload -o DIR
    """


def _duration(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None


@sim.command("run")
@click.argument("lab_file", metavar="LAB", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("workload_file", metavar="WORKLOAD", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--policy", default="testlab", show_default=True, help="testlab, no-prepare or fifo")
@click.option("--compare", multiple=True, help="another policy to run on the same jobs (repeatable)")
@click.option(
    "--what-if", "what_ifs", multiple=True, help="a change to compare with (repeatable; see docs/sim.md)"
)
@click.option("--seed", type=int, help="override the workload's seed")
@click.option("--duration", help="override how long jobs arrive (e.g. 6h)")
@click.option("--until", help="stop the simulation at this simulated time even if jobs remain")
@click.option("--json", "as_json", is_flag=True, help="print an object keyed by run name")
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("sim-report.html"),
    show_default=True,
    help="where to write the HTML report with plots",
)
@click.option("--no-html", is_flag=True, help="write no HTML report")
def run(
    lab_file: Path,
    workload_file: Path,
    policy: str,
    compare: tuple[str, ...],
    what_ifs: tuple[str, ...],
    seed: int | None,
    duration: str | None,
    until: str | None,
    as_json: bool,
    html_path: Path,
    no_html: bool,
) -> None:
    """Simulate WORKLOAD on LAB with a policy (and others to compare, and what-if changes)."""
    from testlab.domain.labfile import parse_lab
    from testlab.sim.runner import run_specs
    from testlab.sim.workload import describe_workload, parse_workload

    lab = parse_lab(lab_file)
    workload = parse_workload(workload_file)
    if seed is not None:
        workload = workload.with_seed(seed)
    arrivals = _duration(duration, "--duration")
    if arrivals is not None:
        if arrivals <= 0:
            raise UserError("--duration: must be more than 0")
        workload = workload.with_duration(arrivals)
    try:
        specs = run_specs(lab, workload, [policy, *compare], what_ifs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    runs = _run_with_progress(specs, _duration(until, "--until"), workload.duration)

    header = [
        f"lab {lab_file}: {len(lab.hosts)} hosts, {len(lab.vms)} VMs; "
        f"workload {workload_file}, seed {workload.seed}"
    ]
    header += describe_workload(workload).splitlines()
    header += [f"what-if: {text}" for text in what_ifs]
    if not no_html:
        from testlab.sim.html import write_html

        write_html(html_path, runs, f"testlab sim {lab_file.name} {workload_file.name}", header)
    if as_json:
        from testlab.sim.report import json_report

        print_json(json_report(runs))
        return
    from testlab.sim.report import notes, table_rows

    for line in header:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    _print_table(list(runs), table_rows(runs))
    for line in notes(runs):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if not no_html:
        console.print(f"report: {html_path}", highlight=False, markup=False)


def _print_table(names: list[str], rows: list[list[str]]) -> None:
    """One column per run; labels and values never wrap, so the table reads at any width."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    table = Table(header_style="bold")
    table.add_column("", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    needed = Measurement.get(console, console.options.update(width=1000), table).maximum
    Console(width=max(console.width, needed)).print(table)


def _run_with_progress(specs, until: float | None, duration: float):
    from testlab.sim.runner import run_all

    if not sys.stderr.isatty():
        return run_all(specs, until=until)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = until or duration
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:

        def tracker(spec):
            task = progress.add_task(spec.name, total=total, sim="")

            def update(now: float) -> None:
                progress.update(task, completed=min(now, total), sim=f"day {now / 86400:.1f}")

            return update

        return run_all(specs, until=until, progress=tracker)


@sim.command("export-workload")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("workload"),
    show_default=True,
    help="directory to write workload.yaml and the job files into",
)
@click.option("--since", help="only the jobs submitted in this last stretch of the history (e.g. 7d)")
@click.option("--replay", is_flag=True, help="arrivals at the recorded times instead of a fitted rate")
def export_workload(output: Path, since: str | None, replay: bool) -> None:
    """Derive a workload from the history of this lab's database (arrivals, run and revert times)."""
    from testlab.cli.context import database, settings
    from testlab.sim.export import export_workload as export

    window = _duration(since, "--since")
    with database() as session:
        written = export(session, settings(), output, since=window, replay=replay)
    click.echo(f"workload written: {written}")
