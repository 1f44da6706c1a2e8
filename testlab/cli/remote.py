"""The `job` and `vm` commands against a remote testlab server: `--server URL` (or TESTLAB_SERVER)
with the API token in TESTLAB_TOKEN.

The server answers with the same views the local commands build (testlab/services/views.py), so a
command prints exactly the same whichever way it got its data; the server's one-line errors become
the CLI's (exit code 1). Every request has a deadline.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx

from testlab.domain.jobfile import JobDef
from testlab.services.errors import UserError

SERVER_ENV = "TESTLAB_SERVER"
TOKEN_ENV = "TESTLAB_TOKEN"
TIMEOUT = 30.0  # seconds for an ordinary request
UPLOAD_TIMEOUT = 600.0  # seconds for a submission with its files
_META = "testlab.server"

F = TypeVar("F", bound=Callable[..., Any])


def _remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_META] = value.rstrip("/")


def server_option(command: F) -> F:
    """Adds `--server URL` to a command that can run against a remote server."""
    return click.option(
        "--server",
        metavar="URL",
        envvar=SERVER_ENV,
        expose_value=False,
        callback=_remember,
        help=f"Ask this testlab server instead of the local database (token in {TOKEN_ENV}).",
    )(command)


def client() -> RemoteClient | None:
    """The client of the server given with --server, or None to work on the local database."""
    ctx = click.get_current_context(silent=True)
    url = ctx.meta.get(_META) if ctx is not None else None
    return RemoteClient(url, os.environ.get(TOKEN_ENV)) if url else None


class RemoteClient:
    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--server {url}: give an http:// or https:// URL")
        self.url = url
        self.token = token

    def _request(self, method: str, path: str, *, timeout: float = TIMEOUT, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = httpx.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)
        except httpx.TimeoutException:
            raise UserError(f"server {self.url}: no answer within {timeout:g} s") from None
        except httpx.HTTPError as error:
            raise UserError(f"server {self.url}: cannot connect ({type(error).__name__}: {error})") from None
        if response.status_code >= 400:
            raise UserError(self._problem(response))
        return response.json()

    def _problem(self, response: httpx.Response) -> str:
        try:
            detail = str(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = (response.text.strip().splitlines() or [response.reason_phrase])[0]
        if response.status_code == 401 and not self.token:
            return f"{detail} (set {TOKEN_ENV} to your API token)"
        return detail

    def _pages(self, path: str, key: str, cursor: str, params: dict, limit: int | None) -> list[dict]:
        """Every item of a paginated listing (up to `limit`), following its `next` cursor."""
        items: list[dict] = []
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page_size = 500 if limit is None else max(1, min(500, limit - len(items)))
            page = self._request("GET", path, params={**params, "limit": page_size})
            items += page[key]
            if page.get("next") is None or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]
            params[cursor] = page["next"]

    # ------------------------------------------------------------------------------------ jobs

    def list_jobs(self, status: str | None, limit: int | None) -> list[dict]:
        return self._pages("/api/v1/jobs", "jobs", "before", {"status": status}, limit)

    def job(self, job_id: int) -> dict:
        return self._request("GET", f"/api/v1/jobs/{job_id}")

    def submit(self, definition: JobDef, priority: int | None) -> int:
        """Send the job file and the files its steps list, each named by its path relative to it."""
        names = sorted({name for step in definition.steps for name in step.files})
        with contextlib.ExitStack() as stack:
            files = [("job", (definition.source.name, stack.enter_context(definition.source.open("rb"))))]
            for name in names:
                handle = stack.enter_context((definition.base_dir / name).open("rb"))
                files.append(("file", (name, handle)))
            data = {"priority": str(priority)} if priority is not None else {}
            answer = self._request("POST", "/api/v1/jobs", files=files, data=data, timeout=UPLOAD_TIMEOUT)
        return int(answer["id"])

    def cancel(self, job_id: int) -> str:
        return self._request("POST", f"/api/v1/jobs/{job_id}/cancel")["status"]

    def restart(self, job_id: int) -> str:
        return self._request("POST", f"/api/v1/jobs/{job_id}/restart")["status"]

    # ------------------------------------------------------------------------------------- VMs

    def vms(self) -> list[dict]:
        return self._pages("/api/v1/vms", "vms", "after", {}, None)

    def vm(self, name: str) -> dict:
        return self._request("GET", f"/api/v1/vms/{_segment(name)}")

    def change_vm(self, name: str, change: str, abort: bool) -> str:
        body = {"change": change, "abort": abort}
        return self._request("POST", f"/api/v1/vms/{_segment(name)}/change", json=body)["message"]


def _segment(name: str) -> str:
    return quote(name, safe="")
