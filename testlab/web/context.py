"""What every route needs: the settings, the web options, and transactions that follow the rule.

Routes are plain `def` functions: FastAPI runs them in its thread pool, so their database calls never
block the event loop. Reads are read-only transactions; writes go through `run_transaction` like the
CLI's (conditional, retried on fresh rows; a `Conflict` after the retries is a 409).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.session import run_transaction
from testlab.web.options import WebOptions

if TYPE_CHECKING:
    from testlab.web.live import ChangeWatcher

T = TypeVar("T")


@dataclass
class WebContext:
    settings: Settings
    options: WebOptions
    watcher: ChangeWatcher
    engine: object | None = None  # the engine of `serve --engine`, when it runs in this process

    @property
    def url(self) -> str:
        return self.settings.database_url

    def read(self, work: Callable[[Session], T]) -> T:
        return run_transaction(self.url, work, readonly=True)

    def write(self, work: Callable[[Session], T], *, by: str) -> T:
        return run_transaction(self.url, work, actor=by)


def web(request: Request) -> WebContext:
    return request.app.state.web
