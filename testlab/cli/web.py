"""`testlab serve`: the web UI, the REST API and the metrics (and, with --engine, the engine too)."""

from __future__ import annotations

import logging

import click

from testlab.cli.context import ready


def register(cli: click.Group) -> None:
    cli.add_command(serve)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port.")
@click.option("--engine", "with_engine", is_flag=True, help="Run the engine in the same process.")
@click.option("--anonymous", is_flag=True, help="Let anyone read without logging in (never write).")
@click.option("--access-log", is_flag=True, help="Log every request (never its credentials).")
def serve(host: str, port: int, with_engine: bool, anonymous: bool, access_log: bool) -> None:
    """Serve the web UI and the API until SIGTERM or Ctrl-C."""
    from testlab.web.options import WebOptions
    from testlab.web.server import serve as run_server

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = WebOptions.from_env(anonymous=True if anonymous else None)
    code = run_server(
        ready(),
        host=host,
        port=port,
        with_engine=with_engine,
        options=options,
        access_log=access_log,
        on_ready=lambda url: click.echo(
            f"testlab serving on {url}" + (" with the engine" if with_engine else "")
        ),
    )
    raise SystemExit(code)
