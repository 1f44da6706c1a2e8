"""`testlab engine`, `testlab demo` and `testlab agent`: the long-running parts."""

from __future__ import annotations

import logging

import click

from testlab.cli.context import settings


def register(cli: click.Group) -> None:
    cli.add_command(engine)
    cli.add_command(demo)
    cli.add_command(agent)


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Log every operation.")
def engine(verbose: bool) -> None:
    """Run the engine in the foreground (stop with SIGTERM or Ctrl-C)."""
    from testlab.engine.daemon import run_engine
    from testlab.engine.lease import LeaseHeld
    from testlab.services.errors import UserError

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per agent request drowns the rest
    try:
        code = run_engine(settings())
    except LeaseHeld as error:
        raise UserError(str(error)) from None
    raise SystemExit(code)


@click.command()
@click.option("--timeout", default=120.0, show_default=True, help="Give up after this many seconds.")
def demo(timeout: float) -> None:
    """Create a local sandbox lab, run example jobs on it end to end, and show the results."""
    from testlab.demo.run import run_demo

    raise SystemExit(run_demo(settings(), timeout=timeout))


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run the guest agent (same options as `python3 server.py`; see `testlab agent --help`)."""
    from testlab.agent.server import main as agent_main

    raise SystemExit(agent_main(list(ctx.args)))
