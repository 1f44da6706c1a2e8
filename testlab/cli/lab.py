"""`testlab lab ...` and `testlab host ...`: the lab's definition and its hosts."""

from __future__ import annotations

from pathlib import Path

import click

from testlab.cli.context import current_user, database, ready, write
from testlab.cli.output import print_json, print_table, styled
from testlab.domain.labfile import dump_lab, parse_lab
from testlab.services import hosts as host_service
from testlab.services.lab import apply_lab, export_lab
from testlab.services.views import list_hosts
from testlab.services.vms import get_host, set_host_status


def register(cli: click.Group) -> None:
    cli.add_command(lab)
    cli.add_command(host)


@click.group()
def lab() -> None:
    """The lab definition: hosts and VMs."""


@lab.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def lab_apply(file: Path) -> None:
    """Create or update hosts and VMs from FILE; VMs no longer listed are retired."""
    definition = parse_lab(file)
    # Sandbox disks are created before the rows, outside any transaction (idempotent: a failed apply
    # leaves domains the next apply reuses); copying them must not hold the database's write lock.
    host_service.prepare_domains(definition)
    report = write(lambda session: apply_lab(session, definition))
    if not report.changed:
        click.echo("lab unchanged")
        return
    for kind, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("retired", report.retired),
    ):
        if names:
            click.echo(f"{kind}: {', '.join(names)}")


@lab.command("export")
def lab_export() -> None:
    """Print the current lab as a lab file."""
    with database(readonly=True) as session:
        click.echo(dump_lab(export_lab(session)), nl=False)


@click.group()
def host() -> None:
    """Hypervisor and test hosts."""


@host.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def host_list(as_json: bool) -> None:
    with database(readonly=True) as session:
        hosts = list_hosts(session)
    if as_json:
        print_json(hosts)
        return
    print_table(
        None,
        ["host", "backend", "uri", "status", "vms", "max active", "max running", "max reverting"],
        [
            (
                h["name"],
                h["backend"],
                h["uri"],
                styled(h["status"]),
                h["vms"],
                h["limits"]["max_active"],
                h["limits"]["max_running"],
                h["limits"]["max_reverting"],
            )
            for h in hosts
        ],
    )


@host.command("set")
@click.argument("name")
@click.option("--down", "status", flag_value="down", help="Mark the host down: nothing is scheduled on it.")
@click.option("--up", "status", flag_value="up", help="Mark the host up again.")
def host_set(name: str, status: str | None) -> None:
    if status is None:
        raise click.UsageError("give --down or --up")
    by = current_user()
    click.echo(write(lambda session: set_host_status(session, get_host(session, name), status, by=by)))


@host.command("power-cycle")
@click.argument("name")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds the power cycle may take.")
def host_power_cycle(name: str, timeout: float) -> None:
    """Run the host's power-cycle command; its VMs are then treated as dirty."""
    from testlab.engine.options import EngineOptions

    current = ready()
    click.echo(
        host_service.power_cycle(
            current.database_url,
            name,
            timeout=timeout,
            by=current_user(),
            max_tries=EngineOptions.from_env().max_tries,
            jobs_dir=current.jobs_dir,
        )
    )
