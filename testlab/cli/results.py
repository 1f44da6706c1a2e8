"""`testlab job results|logs|artifacts|mark-reference`: what a job's tasks left, for people and scripts.

`job results` reports and never judges: it exits 0 even when tests failed (`job show` says how the job
ended; scripts read `--json`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from testlab.cli.context import database, settings, write
from testlab.cli.jobs import job
from testlab.cli.output import print_json, print_table, styled
from testlab.services.jobs import get_job
from testlab.services.outputs import copy_artifacts, follow_log, job_tasks, log_path, task_running
from testlab.services.results import job_results, mark_reference, ordered


def register(cli: click.Group) -> None:
    for command in (job_results_command, job_logs, job_artifacts, job_mark_reference):
        job.add_command(command)
    cli.add_command(gc)


@click.command("results")
@click.argument("job_id", type=int)
@click.option("--failures", is_flag=True, help="Only the failing test cases.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list, new failures first.")
def job_results_command(job_id: int, failures: bool, as_json: bool) -> None:
    """The job's test cases, new failures first, each marked new or known and flaky."""
    with database(readonly=True) as session:
        results = ordered(job_results(session, get_job(session, job_id), failing_only=failures))
    if as_json:
        print_json([result.as_dict() for result in results])
        return
    print_table(
        f"job {job_id}: {len(results)} test cases",
        ["task", "vm", "step", "test", "status", "", "message"],
        [
            (
                r.task_id,
                r.vm,
                r.step,
                f"{r.suite}: {r.name}" if r.suite else r.name,
                styled(r.status),
                ("new" if r.new else "known" if r.status in ("failed", "error") else "")
                + (" flaky" if r.flaky else ""),
                (r.message.splitlines() or [""])[0][:120],
            )
            for r in results
        ],
    )


@click.command("logs")
@click.argument("job_id", type=int)
@click.option("--task", "task_id", type=int, help="Only this task (its id, as `job show` prints it).")
@click.option("--follow", is_flag=True, help="Go on printing a running task's output until it ends.")
def job_logs(job_id: int, task_id: int | None, follow: bool) -> None:
    """Print the job's task logs (a header line before each when there are several)."""
    current = settings()
    with database(current, readonly=True) as session:
        get_job(session, job_id)
        tasks = job_tasks(session, job_id, task_id)
    out = sys.stdout.buffer
    for number, (task, step, vm, status) in enumerate(tasks):
        if len(tasks) > 1:
            out.write(
                f"{'' if number == 0 else chr(10)}== task {task} ({step} on {vm}): {status} ==\n".encode()
            )
        path = log_path(current, job_id, task)

        def running(task: int = task) -> bool:
            if not follow:
                return False
            with database(current, readonly=True) as session:
                return task_running(session, task)

        for chunk in follow_log(path, running):
            out.write(chunk)
            out.flush()


@click.command("artifacts")
@click.argument("job_id", type=int)
@click.option(
    "--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Directory."
)
def job_artifacts(job_id: int, out: Path) -> None:
    """Copy the job's artifacts into OUT/<task id>-<vm>/."""
    current = settings()
    with database(current, readonly=True) as session:
        get_job(session, job_id)
        copied = copy_artifacts(current, session, job_id, out)
    click.echo(f"{len(copied)} file(s) copied into {out}")


@click.command("mark-reference")
@click.argument("job_id", type=int)
def job_mark_reference(job_id: int) -> None:
    """Make an ended job the reference later jobs' failures are compared with."""
    cases = write(lambda session: mark_reference(session, get_job(session, job_id)))
    click.echo(f"job {job_id} is a reference: {cases} test case results recorded")


@click.command("gc")
@click.option("--older-than", "older_than", required=True, help="A duration: jobs that ended before then go.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def gc(older_than: str, dry_run: bool) -> None:
    """Remove old jobs' rows and files (never reference jobs nor unfinished ones)."""
    from datetime import timedelta

    from testlab.cli.context import current_user, ready
    from testlab.domain.durations import parse_duration
    from testlab.services.errors import UserError
    from testlab.services.retention import collect

    try:
        seconds = parse_duration(older_than)
    except ValueError as error:
        raise UserError(f"--older-than: {error}") from None
    for line in collect(ready(), timedelta(seconds=seconds), dry_run=dry_run, actor=current_user()):
        click.echo(line)
