"""`testlab engine`, `testlab demo` and `testlab agent`: the long-running parts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from testlab.cli.context import settings


def register(cli: click.Group) -> None:
    cli.add_command(engine)
    cli.add_command(demo)
    cli.add_command(agent)


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Log every operation.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve the engine's Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
def engine(verbose: bool, metrics_port: int | None) -> None:
    """Run the engine in the foreground (stop with SIGTERM or Ctrl-C)."""
    from testlab.engine.daemon import run_engine
    from testlab.engine.lease import LeaseHeld
    from testlab.services.errors import UserError

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")

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
@click.option("--serve", "then_serve", is_flag=True, help="Then serve the lab in a browser until Ctrl-C.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="With --serve.")
def demo(timeout: float, then_serve: bool, port: int) -> None:
    """Create a local sandbox lab, run example jobs on it end to end, and show the results."""
    from testlab.demo.run import run_demo

    current = settings()
    code = run_demo(current, timeout=timeout)
    program = sys.argv[0] if Path(sys.argv[0]).name == "testlab" else "testlab"
    if not then_serve:
        click.echo(f"to see them in a browser: {program} serve --anonymous   (http://127.0.0.1:8080/)")
        raise SystemExit(code)
    raise SystemExit(_serve_demo(current, port))


def _serve_demo(current, port: int) -> int:
    """Serve the demo lab with its engine, readable by anyone on this machine; an administrator
    `demo` gets a fresh password each time, to submit, cancel and take VMs out of service."""
    import contextlib
    import secrets

    from testlab.db.session import run_transaction
    from testlab.services.errors import UserError
    from testlab.services.users import add_user, set_password
    from testlab.web.options import WebOptions
    from testlab.web.server import serve

    password = secrets.token_urlsafe(9)

    def admin(session) -> None:
        with contextlib.suppress(UserError):  # made by an earlier run
            add_user(session, "demo", admin=True)
        session.flush()
        set_password(session, "demo", password)

    run_transaction(current.database_url, admin, actor="demo")
    return serve(
        current,
        port=port,
        with_engine=True,
        options=WebOptions.from_env(anonymous=True),
        on_ready=lambda url: click.echo(
            f"serving the demo lab on {url} (log in as demo / {password} to act); Ctrl-C stops"
        ),
    )


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run the guest agent (same options as `python3 server.py`; see `testlab agent --help`)."""
    from testlab.agent.server import main as agent_main

    raise SystemExit(agent_main(list(ctx.args)))
