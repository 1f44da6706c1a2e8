"""`testlab vm ...` and `testlab user ...`: the VM pool and the people who use it."""

from __future__ import annotations

import click

from testlab.cli.context import current_user, database, write
from testlab.cli.output import print_json, print_table, styled
from testlab.services import vms as vm_service
from testlab.services.users import add_user
from testlab.services.views import list_vms, vm_view


def register(cli: click.Group) -> None:
    cli.add_command(vm)
    cli.add_command(user)


@click.group()
def vm() -> None:
    """VMs: a host, a domain and a clean snapshot."""


@vm.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def vm_list(as_json: bool) -> None:
    with database(readonly=True) as session:
        vms = list_vms(session)
    if as_json:
        print_json(vms)
        return
    print_table(
        None,
        ["vm", "host", "domain", "snapshot", "role", "status", "errors", "labels"],
        [
            (
                v["name"],
                v["host"],
                v["domain"],
                v["snapshot"],
                v["role"],
                styled(v["status"]) + (" (maintenance requested)" if v["maintenance_requested"] else ""),
                v["errors"],
                ",".join(v["labels"]),
            )
            for v in vms
        ],
    )


@vm.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def vm_show(name: str, as_json: bool) -> None:
    with database(readonly=True) as session:
        row = vm_service.get_vm(session, name)
        view = vm_view(row, row.host.name)
    if as_json:
        print_json(view)
        return
    print_table(f"vm {name}", ["field", "value"], [(k, v) for k, v in view.items()])


@vm.command("set")
@click.argument("name")
@click.option(
    "--maintenance",
    "change",
    flag_value="maintenance",
    help="Take the VM out of service (after its current task).",
)
@click.option("--no-maintenance", "change", flag_value="no-maintenance", help="End maintenance.")
@click.option("--offline", "change", flag_value="offline", help="Mark offline: the monitor checks it.")
@click.option("--enable", "change", flag_value="enable", help="Return an offline/maintenance VM to service.")
@click.option("--abort", is_flag=True, help="With --maintenance: abort the running task (it is requeued).")
def vm_set(name: str, change: str | None, abort: bool) -> None:
    if change is None:
        raise click.UsageError("give one of --maintenance, --no-maintenance, --offline, --enable")
    if abort and change != "maintenance":
        raise click.UsageError("--abort only goes with --maintenance")
    by = current_user()
    change_vm = {
        "maintenance": lambda s, vm: vm_service.request_maintenance(s, vm, abort=abort, by=by),
        "no-maintenance": lambda s, vm: vm_service.end_maintenance(s, vm, by=by),
        "offline": lambda s, vm: vm_service.set_offline(s, vm, by=by),
        "enable": lambda s, vm: vm_service.enable(s, vm, by=by),
    }[change]
    click.echo(write(lambda session: change_vm(session, vm_service.get_vm(session, name))))


@click.group()
def user() -> None:
    """Users and their API tokens."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May administer the lab.")
def user_add(name: str, admin: bool) -> None:
    """Create a user; prints its API token (shown only once)."""
    click.echo(write(lambda session: add_user(session, name, admin=admin)))
