"""`testlab job ...`: submit, follow, cancel and restart jobs."""

from __future__ import annotations

from pathlib import Path

import click

from testlab.cli.context import current_user, database, settings, write
from testlab.cli.output import print_json, print_table, styled
from testlab.cli.remote import client, server_option
from testlab.domain.inputlimits import INT32_MAX, INT32_MIN
from testlab.domain.jobfile import parse_job
from testlab.domain.statuses import TaskStatus
from testlab.services.jobs import cancel_job, get_job, restart_job, submit_job
from testlab.services.views import job_view, list_jobs


def register(cli: click.Group) -> None:
    cli.add_command(job)


@click.group()
def job() -> None:
    """Jobs: steps of tasks, each task on one VM."""


@job.command("submit")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--priority",
    type=click.IntRange(INT32_MIN, INT32_MAX),
    help="Override the file's priority (lower runs first).",
)
@server_option
def job_submit(file: Path, priority: int | None) -> None:
    """Submit the job defined in FILE; prints its id."""
    definition = parse_job(file)
    if (remote := client()) is not None:
        click.echo(remote.submit(definition, priority))
        return
    current = settings()
    owner = current_user()
    click.echo(
        write(
            lambda session: submit_job(session, current, definition, owner=owner, priority=priority), current
        )
    )


@job.command("list")
@click.option("--status", type=click.Choice(sorted(TaskStatus.ALL)), help="Only jobs in this status.")
@click.option("--limit", type=int, default=None, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_option
def job_list(status: str | None, limit: int | None, as_json: bool) -> None:
    if (remote := client()) is not None:
        jobs = remote.list_jobs(status, limit)
    else:
        with database(readonly=True) as session:
            jobs = list_jobs(session, status, limit)
    if as_json:
        print_json(jobs)
        return
    print_table(
        None,
        ["id", "name", "owner", "prio", "status", "submitted", "ended"],
        [
            (j["id"], j["name"], j["owner"], j["priority"], styled(j["status"]), j["submitted"], j["ended"])
            for j in jobs
        ],
    )


@job.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_option
def job_show(job_id: int, as_json: bool) -> None:
    if (remote := client()) is not None:
        view = remote.job(job_id)
    else:
        with database(readonly=True) as session:
            view = job_view(session, get_job(session, job_id))
    if as_json:
        print_json(view)
        return
    reference = ", a reference" if view["reference"] else ""
    print_table(
        f"job {view['id']} {view['name']}: {view['status']}, {view['results']['verdict']} "
        f"(priority {view['priority']}, by {view['owner']}{reference})",
        ["step", "task", "vm", "status", "tries", "result"],
        [
            (
                step["name"],
                task["id"],
                task["vm"] or f"any [{', '.join(step['labels'] or ())}]",
                styled(task["status"]),
                task["tries"],
                f"blocked: {task['blocked']}" if task["blocked"] else task["result"],
            )
            for step in view["steps"]
            for task in step["tasks"]
        ],
    )
    _print_lifecycles(view)


def _print_lifecycles(view: dict) -> None:
    """Each task's history string (its VM's uses since the last wipe), and for a failure on a reused
    VM the earlier uses, newest first: a machine left broken shows here (docs/lifecycle.md)."""
    for step in view["steps"]:
        for task in step["tasks"]:
            if task.get("history"):
                click.echo(f"task {task['id']} on {task['vm']}: history {task['history']}")
            earlier = task.get("used_before")
            if earlier is None:
                continue
            if not earlier:
                click.echo(
                    f"task {task['id']} {task['status']}: no earlier use of {task['vm']} since its last wipe"
                )
                continue
            click.echo(
                f"task {task['id']} {task['status']} on {task['vm']}, used before it since its last wipe:"
            )
            for use in earlier:
                mark = " (still running then)" if use["concurrent"] else ""
                if use["job"] is not None:
                    outcome = use["outcome"] or "no verdict"
                    what = f"job {use['job']} step {use['step']} task {use['task']}: {outcome}"
                else:
                    what = f"{use['kind']}#{use['id']} by {use['actor']}"
                click.echo(f"  {what}{mark}")


@job.command("cancel")
@click.argument("job_id", type=int)
@server_option
def job_cancel(job_id: int) -> None:
    """Cancel a job: queued tasks are skipped, running ones are killed."""
    remote = client()
    status = remote.cancel(job_id) if remote else write(lambda session: cancel_job(session, job_id).status)
    click.echo(f"job {job_id}: cancel requested ({status})")


@job.command("restart")
@click.argument("job_id", type=int)
@server_option
def job_restart(job_id: int) -> None:
    """Run an ended job again from scratch."""
    if (remote := client()) is not None:
        remote.restart(job_id)
    else:
        current = settings()
        write(lambda session: restart_job(session, current, job_id), current)
    click.echo(f"job {job_id} requeued")
