"""`testlab engine`, `testlab demo` and `testlab agent`: the long-running parts."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    cli.add_command(agent)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run the guest agent (same options as `python3 server.py`; see `testlab agent --help`)."""
    from testlab.agent.server import main as agent_main

    raise SystemExit(agent_main(list(ctx.args)))
