"""`testlab vm wipe|exec|history` and `testlab blame`: reused machines and who broke them.

docs/lifecycle.md describes the records these commands read and write.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import click

from testlab.cli.admin import vm
from testlab.cli.context import current_user, database, settings, write
from testlab.cli.output import print_json, print_table
from testlab.db.models import utcnow
from testlab.domain.durations import parse_duration
from testlab.lifecycle import blame as rank_suspects
from testlab.services import vms as vm_service
from testlab.services.errors import UserError
from testlab.services.uses import current_lifecycle, lifecycles
from testlab.services.views import use_view
from testlab.services.vmexec import exec_on_vm

_CENTURY = 100 * 365 * 86400.0  # a longer --since is everything (and would overflow a datetime)


def register(cli: click.Group) -> None:
    cli.add_command(blame)


@vm.command("wipe")
@click.argument("name")
def vm_wipe(name: str) -> None:
    """Wipe the VM (revert or reinstall) before its next use; a running task finishes first."""
    by = current_user()
    click.echo(
        write(lambda session: vm_service.request_wipe(session, vm_service.get_vm(session, name), by=by))
    )


@vm.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1, max=86400),
    default=600.0,
    show_default=True,
    help="Seconds the command may run.",
)
def vm_exec(name: str, command: tuple[str, ...], timeout: float) -> None:
    """Run COMMAND on the VM through its agent, outside any job; exits with its exit code.

    The command is recorded in the VM's lifecycle (with who ran it), so the next tasks' history
    strings show it. Give it after `--`: testlab vm exec NAME -- ls -l /tmp"""
    line = " ".join(command)
    if len(line) > 10_000:
        raise UserError(f"the command is {len(line)} characters long; at most 10000")
    code = exec_on_vm(settings().database_url, name, line, by=current_user(), timeout=timeout)
    sys.exit(code)


@vm.command("history")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def vm_history(name: str, as_json: bool) -> None:
    """The VM's uses since its last wipe, oldest first."""
    with database(readonly=True) as session:
        row = vm_service.get_vm(session, name)
        uses = current_lifecycle(session, row.id)
        wipe = row.wipe
    items = [{**use_view(u.use), "detail": u.detail} for u in uses]
    if as_json:
        print_json(items)
        return
    print_table(
        f"vm {name} ({wipe}): {len(items)} use(s) since its last wipe",
        ["use", "kind", "job", "step", "task", "by", "started", "ended", "outcome"],
        [
            (
                u["id"],
                u["kind"],
                u["job"],
                u["step"],
                u["task"],
                u["actor"] or "",
                u["started"],
                u["ended"] or "running",
                u["outcome"] or "",
            )
            for u in items
        ],
    )
    for u in items:
        if u["detail"]:
            click.echo(f"{u['kind']}#{u['id']}: {u['detail']}")


@click.command()
@click.option("--vm", "vm_names", multiple=True, help="Only this VM's uses (repeatable).")
@click.option("--since", default="30d", show_default=True, help="Only uses begun this long ago or later.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list, most suspect first.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Lines to print.")
def blame(vm_names: tuple[str, ...], since: str, as_json: bool, limit: int) -> None:
    """Rank the steps whose runs most often came before failures of other jobs on the same machine.

    The score is the failure-after rate's posterior mean, centred on the lab's failure rate
    (docs/lifecycle.md says why)."""
    try:
        window = parse_duration(since)
    except ValueError as error:
        raise UserError(f"--since: {error}") from None
    with database(readonly=True) as session:
        vm_ids = [vm_service.get_vm(session, name).id for name in vm_names] or None
        start = utcnow() - timedelta(seconds=window) if window < _CENTURY else None
        found = lifecycles(session, since=start, vm_ids=vm_ids)
    suspects = rank_suspects(found)
    if as_json:
        print_json([s.as_dict() for s in suspects])
        return
    print_table(
        f"blame over {len(found)} lifecycle(s) since {since} ago",
        ["step", "latest job", "failures after", "successes after", "score"],
        [
            (
                s.step if s.step is not None else s.kind,
                s.job if s.job is not None else "",
                s.failures_after,
                s.successes_after,
                f"{s.score:.3f}",
            )
            for s in suspects[:limit]
        ],
    )
