"""The engine's notification sender: takes due deliveries from the outbox, sends them through their
channel (testlab/notify/), records each attempt. It runs beside the engine's loop and never holds it
up: e-mails go out from a thread, each send has a deadline, and a receiver that fails is retried later
with a growing delay. Its writes are fenced like every engine write: one engine sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

from testlab.config import Settings
from testlab.engine.database import EngineDatabase
from testlab.notify import mail, webhook
from testlab.services import notifications as outbox

log = logging.getLogger("testlab.notify")

IDLE_WAIT = 5.0  # seconds between looks at the outbox when nothing is due soon


class Notifier:
    def __init__(self, settings: Settings, db: EngineDatabase, retry_base: float) -> None:
        self.settings = settings
        self.db = db
        self.retry_base = retry_base
        self.wake = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            while True:
                # A read first: most wake-ups find nothing due, and a write would take the database's
                # write lock (on SQLite, from every other writer) to learn that.
                self.wake.clear()
                wait = await self.db.read(outbox.next_due)
                if wait == 0:
                    batch = await self.db.write(outbox.due)
                    if batch:
                        errors = await asyncio.gather(*(self._send(client, item) for item in batch))
                        for item, error in zip(batch, errors, strict=True):
                            if error is not None:
                                log.warning(
                                    "%s to %s: %s (will retry)", item["channel"], item["target"], error
                                )
                            await self.db.write(
                                outbox.record_attempt, item["id"], error, retry_base=self.retry_base
                            )
                        continue
                timeout = IDLE_WAIT if wait is None else min(max(wait, 0.05), IDLE_WAIT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)

    async def _send(self, client: httpx.AsyncClient, item: dict[str, Any]) -> str | None:
        if item["channel"] == "webhook":
            return await webhook.send(client, item["url"], item["secret"], item["payload"])
        if not self.settings.smtp_url:
            return "no SMTP server configured (TESTLAB_SMTP)"
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    mail.send,
                    self.settings.smtp_url,
                    self.settings.mail_from,
                    item["target"],
                    item["subject"],
                    item["payload"],
                ),
                mail.TIMEOUT + 5,
            )
        except Exception as error:  # noqa: BLE001 - any failure to hand it over is retried later
            return f"{type(error).__name__}: {error}"
        return None
