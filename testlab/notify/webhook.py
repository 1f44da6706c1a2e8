"""One webhook call: a JSON body, signed so the receiver knows it comes from this lab unchanged.

Headers: `X-Testlab-Delivery` (the delivery's id, the same at every attempt: receivers drop repeats
on it), `X-Testlab-Event` (`job` or `notice`) and `X-Testlab-Signature: sha256=HEX`, the HMAC-SHA256
of the exact body bytes under the webhook's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def send(client: httpx.AsyncClient, url: str, secret: str, payload: dict[str, Any]) -> str | None:
    """POST the payload; None when the receiver took it (2xx), else why not, in one line."""
    body = body_of(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "testlab-webhook",
        "X-Testlab-Delivery": str(payload.get("id", "")),
        "X-Testlab-Event": str(payload.get("type", "")),
        "X-Testlab-Signature": signature(secret, body),
    }
    try:
        response = await client.post(url, content=body, headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    if 200 <= response.status_code < 300:
        return None
    return f"{url} answered {response.status_code}"
