"""`testlab vm ...` and `testlab user ...`: the VM pool and the people who use it."""

from __future__ import annotations

from pathlib import Path

import click

from testlab.cli.context import current_user, database, settings, write
from testlab.cli.output import print_json, print_table, styled
from testlab.cli.remote import client, server_option
from testlab.services import users as users_service
from testlab.services import vms as vm_service
from testlab.services.errors import UserError
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
@server_option
def vm_list(as_json: bool) -> None:
    if (remote := client()) is not None:
        vms = remote.vms()
    else:
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
@server_option
def vm_show(name: str, as_json: bool) -> None:
    if (remote := client()) is not None:
        view = remote.vm(name)
    else:
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
@server_option
def vm_set(name: str, change: str | None, abort: bool) -> None:
    if change is None:
        raise click.UsageError("give one of --maintenance, --no-maintenance, --offline, --enable")
    if abort and change != "maintenance":
        raise click.UsageError("--abort only goes with --maintenance")
    if (remote := client()) is not None:
        click.echo(remote.change_vm(name, change, abort))
        return
    by = current_user()
    change_vm = {
        "maintenance": lambda s, vm: vm_service.request_maintenance(s, vm, abort=abort, by=by),
        "no-maintenance": lambda s, vm: vm_service.end_maintenance(s, vm, by=by),
        "offline": lambda s, vm: vm_service.set_offline(s, vm, by=by),
        "enable": lambda s, vm: vm_service.enable(s, vm, by=by),
    }[change]
    click.echo(write(lambda session: change_vm(session, vm_service.get_vm(session, name))))


@vm.command("provision")
@click.argument("name")
@click.option(
    "--image",
    "image_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Guest image directory (testlab image build --out DIR).",
)
@click.option(
    "--disk-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default="/var/lib/libvirt/images",
    show_default=True,
    help="Where the domain's disk, kernel and initrd go (readable by the hypervisor).",
)
@click.option(
    "--memory",
    type=click.IntRange(min=64),
    default=384,
    show_default=True,
    help="Guest memory, MiB (new domains).",
)
@click.option(
    "--cpus", type=click.IntRange(1, 64), default=1, show_default=True, help="Virtual CPUs (new domains)."
)
@click.option("--from", "from_snapshot", help="Existing snapshot of the domain the new one starts from.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds the guest may take to boot.",
)
def vm_provision(
    name: str,
    image_dir: Path,
    disk_dir: Path,
    memory: int,
    cpus: int,
    from_snapshot: str | None,
    timeout: float,
) -> None:
    """Create the domain of libvirt VM NAME from a guest image and take its clean snapshot."""
    from testlab.services.provision import ProvisionRequest, provision_vm

    request = ProvisionRequest(
        vm=name,
        image_dir=image_dir,
        disk_dir=disk_dir,
        memory_mib=memory,
        vcpus=cpus,
        from_snapshot=from_snapshot,
        boot_timeout=timeout,
        by=current_user(),
    )
    message = provision_vm(settings(), request, progress=lambda line: click.echo(f"{name}: {line}", err=True))
    click.echo(f"vm {name}: {message}")


@vm.command("power-off")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every VM of the lab.")
def vm_power_off(names: tuple[str, ...], every: bool) -> None:
    """Power VMs off while no engine runs (sandbox agents outlive the engine by design)."""
    from testlab.engine.lease import live_holder
    from testlab.services.hosts import power_off_vms

    if bool(names) == every:
        raise click.UsageError("give VM names or --all")
    current = settings()
    with database(current, readonly=True) as session:
        holder = live_holder(session)
    if holder is not None:
        raise UserError(f"an engine ({holder}) is running: stop it first, or use `vm set NAME --maintenance`")
    done = power_off_vms(current.database_url, list(names) if names else None, by=current_user())
    click.echo(f"powered off: {', '.join(done)}" if done else "no VM to power off")


@click.group()
def user() -> None:
    """Users and their API tokens."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May administer the lab.")
def user_add(name: str, admin: bool) -> None:
    """Create a user; prints its API token (shown only once)."""
    click.echo(write(lambda session: add_user(session, name, admin=admin)))


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_list(as_json: bool) -> None:
    with database(readonly=True) as session:
        users = users_service.list_users(session)
    if as_json:
        print_json(users)
        return
    print_table(None, ["user", "role", "password"], [(u["name"], u["role"], u["password"]) for u in users])


@user.command("password")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input.")
def user_password(name: str, from_stdin: bool) -> None:
    """Set the password NAME logs in to the web UI with (their browser sessions end)."""
    if from_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    click.echo(write(lambda session: users_service.set_password(session, name, password)))


@user.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for (shown in listings).")
@click.option("--expires", help="Valid for this long (e.g. 90d, 12h); default: no end.")
def user_token(name: str, label: str, expires: str | None) -> None:
    """Create another API token for NAME; prints it (shown only once)."""
    from testlab.domain.durations import parse_duration

    try:
        lifetime = parse_duration(expires) if expires else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--expires") from None
    click.echo(write(lambda session: users_service.add_token(session, name, name=label, lifetime=lifetime)))


@user.command("tokens")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_tokens(name: str, as_json: bool) -> None:
    """NAME's API tokens (never the tokens themselves)."""
    with database(readonly=True) as session:
        tokens = users_service.list_tokens(session, name)
    if as_json:
        print_json(tokens)
        return
    print_table(
        None,
        ["id", "label", "created", "expires", "state"],
        [(t["id"], t["name"], t["created"], t["expires"] or "never", t["state"]) for t in tokens],
    )


@user.command("revoke")
@click.argument("name")
@click.option("--token", "token_id", type=int, help="Only this token (an id from `user tokens`).")
def user_revoke(name: str, token_id: int | None) -> None:
    """Revoke NAME's API tokens (all of them, or one)."""
    count = write(lambda session: users_service.revoke_tokens(session, name, token_id))
    click.echo(f"user {name}: {count} token(s) revoked")
