"""The `testlab` command. Thin: parses arguments, calls services, prints.

Exit codes: 0 success, 1 a user error (one line on stderr, nothing changed), 2 a usage error.
"""

from __future__ import annotations

import sys

import click
from sqlalchemy.exc import OperationalError

from testlab.cli import admin, image, jobs, lab, lifecycle, notify, results, run, sim, web
from testlab.db.session import Conflict, SchemaOutOfDate, upgrade
from testlab.domain.errors import DefinitionError
from testlab.hypervisor.base import HypervisorError
from testlab.services.errors import UserError

USER_ERRORS = (UserError, DefinitionError, SchemaOutOfDate, HypervisorError, Conflict)


class Root(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            _fail(str(error))
        except OperationalError as error:
            _fail(f"database error: {str(error.orig).strip().splitlines()[0]}")

    def main(self, *args, **kwargs):  # one line for Ctrl-C too, never a traceback
        try:
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"testlab: {message}", err=True)
    sys.exit(code)


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="testlab")
def cli() -> None:
    """testlab: run jobs on a pool of snapshot-reverted VMs and test hosts."""


@cli.command()
def init() -> None:
    """Create the database or upgrade its schema to this version."""
    from testlab.cli.context import settings

    current = settings()
    current.home.mkdir(parents=True, exist_ok=True)
    upgrade(current.database_url)
    click.echo(f"database ready: {_redact(current.database_url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


lab.register(cli)
jobs.register(cli)
results.register(cli)
notify.register(cli)
admin.register(cli)
lifecycle.register(cli)
run.register(cli)
sim.register(cli)
image.register(cli)
web.register(cli)


def main() -> None:
    cli(prog_name="testlab")
