"""`testlab webhook ...` and `testlab user notify`: where notifications go."""

from __future__ import annotations

import click

from testlab.cli.admin import user
from testlab.cli.context import database, write
from testlab.cli.output import print_json, print_table
from testlab.services.notifications import WEBHOOK_EVENTS, add_webhook, list_webhooks, remove_webhook
from testlab.services.users import NOTIFY_ON, set_notifications


def register(cli: click.Group) -> None:
    cli.add_command(webhook)
    user.add_command(user_notify)


@click.group()
def webhook() -> None:
    """Webhooks: JSON notifications signed with HMAC-SHA256 (docs/notifications.md)."""


@webhook.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--events",
    type=click.Choice(WEBHOOK_EVENTS),
    default="named",
    show_default=True,
    help="named: only jobs whose file names it; jobs: every job's end; notices: the lab's notices; all.",
)
def webhook_add(name: str, url: str, events: str) -> None:
    """Register a webhook; prints its signing secret (shown only once)."""
    click.echo(write(lambda session: add_webhook(session, name, url, events)))


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def webhook_list(as_json: bool) -> None:
    with database(readonly=True) as session:
        hooks = list_webhooks(session)
    if as_json:
        print_json(hooks)
        return
    print_table(None, ["webhook", "url", "events"], [(h["name"], h["url"], h["events"]) for h in hooks])


@webhook.command("remove")
@click.argument("name")
def webhook_remove(name: str) -> None:
    write(lambda session: remove_webhook(session, name))
    click.echo(f"webhook {name} removed")


@click.command("notify")
@click.argument("name")
@click.option("--email", help="The user's address ('' to remove it).")
@click.option("--on", "notify_on", type=click.Choice(NOTIFY_ON), help="When they hear of their jobs' ends.")
def user_notify(name: str, email: str | None, notify_on: str | None) -> None:
    """Where and when a user hears of their jobs (administrators also get the lab's notices)."""
    click.echo(write(lambda session: set_notifications(session, name, email=email, notify_on=notify_on)))
