"""One e-mail over SMTP: a plain-text summary people can act on (blocking; run in a thread)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

TIMEOUT = 30.0


def render(payload: dict[str, Any]) -> str:
    """The message body: for a job, its tasks as a table, its new failures, and the reason of any
    infrastructure error; for a notice, the notice."""
    if payload.get("type") != "job":
        where = ", ".join(f"{k} {payload[k]}" for k in ("vm", "host") if payload.get(k))
        return f"{payload.get('text', '')}\n" + (f"\n({where})\n" if where else "")
    job = payload["job"]
    lines = [f"Job {job['id']} {job['name']} by {job['owner']}: {job['status']}, {job['verdict']}.", ""]
    width = max((len(f"{t['step']} on {t['vm']}") for t in payload["tasks"]), default=10)
    for task in payload["tasks"]:
        where = f"{task['step']} on {task['vm']}".ljust(width)
        lines.append(f"  {where}  {task['status']:<9}  {task['detail'] or ''}".rstrip())
    if payload.get("new_failures"):
        lines += ["", f"New failures ({payload['new_failures_total']}):"]
        for case in payload["new_failures"]:
            first = (case["message"].splitlines() or [""])[0][:200]
            lines.append(
                f"  {case['step']} on {case['vm']}: {case['suite']}: {case['name']}  {first}".rstrip()
            )
        if payload["new_failures_total"] > len(payload["new_failures"]):
            lines.append(f"  ... and {payload['new_failures_total'] - len(payload['new_failures'])} more")
    if payload.get("infrastructure"):
        lines += ["", "Infrastructure errors (not test failures):"]
        lines += [f"  {reason}" for reason in payload["infrastructure"]]
    return "\n".join(lines) + "\n"


def send(smtp_url: str, sender: str, to: str, subject: str, payload: dict[str, Any]) -> None:
    """Send one e-mail; raises OSError or smtplib.SMTPException when it could not."""
    parts = urlsplit(smtp_url)
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname:
        raise ValueError(f"TESTLAB_SMTP must look like smtp://host:port, not {smtp_url!r}")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = make_msgid(idstring=str(payload.get("id", "")).replace("-", ""), domain="testlab")
    message.set_content(render(payload))
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    factory = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with factory(parts.hostname, port, timeout=TIMEOUT) as server:
        if parts.scheme == "smtp+starttls":
            server.starttls(context=ssl.create_default_context())
        if parts.username:
            server.login(unquote(parts.username), unquote(parts.password or ""))
        server.send_message(message)
