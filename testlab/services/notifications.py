"""The notification outbox: who hears of what, written in the same transaction as what they hear of.

A job's end and every `notify` event (a VM offline, a host down, the engine's disk full...) become rows
of `deliveries`, one per recipient, committed with the change itself, so nothing is lost and nothing
is told twice by a retried transaction (a rollback drops them with it). The engine sends them
(testlab/notify/) and records each attempt here.

Who gets what:
- a job's end: the addresses and webhooks its job file names under `notify:` (`when: failure`, the
  default, or `always`); its owner, when their user has an address and asks for it (`notify_on`);
  webhooks registered for `jobs` (or `all`);
- a notice: administrators with an address; webhooks registered for `notices` (or `all`).

A job "fails" for notifications when it did not complete, or completed with new test failures.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal, null, or_, select, union_all
from sqlalchemy.orm import Session

from testlab.db.models import VM, Delivery, Event, Host, Job, Step, Task, User, Webhook, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow
from testlab.domain.statuses import TaskStatus
from testlab.services.errors import UserError
from testlab.services.results import job_results, job_verdict, ordered

MAX_ATTEMPTS = 12
RETRY_BASE = 5.0  # seconds before the second attempt; doubling, at most RETRY_CAP
RETRY_CAP = 3600.0
NEW_FAILURES_SHOWN = 50
WEBHOOK_EVENTS = ("named", "jobs", "notices", "all")
# Who could hear of a job's end, asked at every job's end in one plain statement (no ORM object for
# the owner), built once (a statement built anew is walked for its cache key at every run): the
# owner's address if they ask for job ends, and the webhooks registered for them.
_JOB_LISTENERS = Prepared(
    union_all(
        select(literal("owner"), User.email, User.notify_on).where(
            User.name == bindparam("owner"),
            User.email.is_not(None),
            # comparisons, not IN: a list in IN is expanded at each run (testlab/db/prepared.py)
            or_(User.notify_on == "always", User.notify_on == "failure"),
        ),
        select(literal("webhook"), Webhook.name, null()).where(
            or_(Webhook.events == "jobs", Webhook.events == "all")
        ),
    )
)


def _add(
    session: Session, channel: str, target: str, subject: str, payload: dict[str, Any], job_id=None
) -> None:
    delivery_id = str(uuid.uuid4())
    now = utcnow()
    session.add(
        Delivery(
            id=delivery_id,
            channel=channel,
            target=target,
            subject=subject,
            payload={"id": delivery_id, **payload},
            status="pending",
            attempts=0,
            next_attempt=now,
            last_error="",
            created=now,
            job_id=job_id,
        )
    )


def enqueue_notice(session: Session, event: Event) -> None:
    """A `notify` event, for the administrators and the webhooks that listen to notices."""
    payload = {
        "type": "notice",
        "text": event.reason,
        "time": event.time.isoformat(timespec="seconds") + "Z",
        "vm": session.scalar(select(VM.name).where(VM.id == event.vm_id)) if event.vm_id else None,
        "host": session.scalar(select(Host.name).where(Host.id == event.host_id)) if event.host_id else None,
    }
    subject = f"[testlab] {event.reason[:150]}"
    for (address,) in session.execute(
        select(User.email).where(User.is_admin.is_(True), User.email.is_not(None))
    ):
        _add(session, "email", address, subject, payload)
    for (name,) in session.execute(select(Webhook.name).where(Webhook.events.in_(("notices", "all")))):
        _add(session, "webhook", name, subject, payload)


def enqueue_job_end(session: Session, job: Job | EditableRow) -> None:
    """A job reached its end: a summary for everyone who asked to hear of it. Most jobs of a busy lab
    have no one to tell, so who could be told is looked up before the verdict is worked out."""
    spec = job.notify or {}
    when = spec.get("when", "failure")
    owner_email, owner_notify_on, global_hooks = None, None, []
    for kind, target, notify_on in _JOB_LISTENERS.execute(session, {"owner": job.owner}):
        if kind == "owner":
            owner_email, owner_notify_on = target, notify_on
        else:
            global_hooks.append(target)
    if not (spec.get("email") or spec.get("webhooks") or owner_email or global_hooks):
        return
    verdict = job_verdict(session, job)
    failed = job.status != TaskStatus.COMPLETED or verdict.new > 0
    emails: list[str] = list(spec.get("email", ())) if failed or when == "always" else []
    hooks: list[str] = list(spec.get("webhooks", ())) if failed or when == "always" else []
    if owner_email and (owner_notify_on == "always" or failed):
        emails.append(owner_email)
    hooks += global_hooks
    if not emails and not hooks:
        return
    tasks = session.execute(
        select(Task.id, Step.name, VM.name, Task.status, Task.exit_code, Task.failures, Task.detail)
        .join(Step, Task.step_id == Step.id)
        .outerjoin(VM, Task.vm_id == VM.id)
        .where(Task.job_id == job.id)
        .order_by(Step.number, Task.number)
    ).all()
    new_failures = [r for r in ordered(job_results(session, job, failing_only=True)) if r.new]
    payload = {
        "type": "job",
        "job": {
            "id": job.id,
            "name": job.name,
            "owner": job.owner,
            "status": job.status,
            "verdict": verdict.text,
            "reference": job.reference,
        },
        "tasks": [
            {"id": t, "step": s, "vm": v, "status": st, "exit_code": code, "failures": f, "detail": d}
            for t, s, v, st, code, f, d in tasks
        ],
        "new_failures": [r.as_dict() for r in new_failures[:NEW_FAILURES_SHOWN]],
        "new_failures_total": len(new_failures),
        "infrastructure": [d for _, _, _, st, _, _, d in tasks if st == TaskStatus.BOTERROR],
    }
    subject = f"[testlab] job {job.id} {job.name}: {job.status}, {verdict.text}"
    for address in dict.fromkeys(emails):
        _add(session, "email", address, subject, payload, job.id)
    for name in dict.fromkeys(hooks):
        _add(session, "webhook", name, subject, payload, job.id)


# ------------------------------------------------------------------------------------ the sender


def due(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """Pending deliveries whose time has come, with what sending them needs (a webhook's URL and
    secret); a webhook removed since is given up."""
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.status == "pending", Delivery.next_attempt <= utcnow())
        .order_by(Delivery.next_attempt)
        .limit(limit)
    ).all()
    hooks = {
        h.name: h for h in session.scalars(select(Webhook).where(Webhook.name.in_({r.target for r in rows})))
    }
    found = []
    for row in rows:
        item = {"id": row.id, "channel": row.channel, "target": row.target, "subject": row.subject}
        item["payload"] = row.payload
        if row.channel == "webhook":
            hook = hooks.get(row.target)
            if hook is None:
                row.status, row.last_error = "failed", f"webhook {row.target} no longer exists"
                continue
            item["url"], item["secret"] = hook.url, hook.secret
        found.append(item)
    return found


def record_attempt(
    session: Session, delivery_id: str, error: str | None, *, retry_base: float = RETRY_BASE
) -> None:
    """After an attempt: delivered, or the next attempt after a growing delay, or given up."""
    row = session.get(Delivery, delivery_id)
    if row is None or row.status != "pending":
        return
    row.attempts += 1
    if error is None:
        row.status, row.delivered, row.last_error = "delivered", utcnow(), ""
        return
    row.last_error = error[:2000]
    if row.attempts >= MAX_ATTEMPTS:
        row.status = "failed"
        return
    delay = min(retry_base * 2 ** (row.attempts - 1), RETRY_CAP)
    row.next_attempt = utcnow() + timedelta(seconds=delay)


def next_due(session: Session) -> float | None:
    """Seconds until the next pending delivery is due (0 if one is), None when nothing is pending."""
    soonest = session.scalar(
        select(Delivery.next_attempt)
        .where(Delivery.status == "pending")
        .order_by(Delivery.next_attempt)
        .limit(1)
    )
    return None if soonest is None else max(0.0, (soonest - utcnow()).total_seconds())


def backlog(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "pending")) or 0


# ------------------------------------------------------------------------------------ webhooks


def add_webhook(session: Session, name: str, url: str, events: str = "named") -> str:
    """Register a webhook; returns its new secret (the only time it is shown)."""
    if events not in WEBHOOK_EVENTS:
        raise UserError(f"webhook events must be one of {', '.join(WEBHOOK_EVENTS)}")
    if not url.startswith(("http://", "https://")) or len(url) > 1000 or any(c.isspace() for c in url):
        raise UserError(f"webhook url {url!r}: expected http://... or https://...")
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"webhook name {name!r}: use letters, digits, '.', '-' and '_'")
    if session.scalars(select(Webhook).where(Webhook.name == name)).first() is not None:
        raise UserError(f"webhook {name} already exists")
    secret = secrets.token_urlsafe(32)
    session.add(Webhook(name=name, url=url, secret=secret, events=events, created=utcnow()))
    return secret


def remove_webhook(session: Session, name: str) -> None:
    hook = session.scalars(select(Webhook).where(Webhook.name == name)).first()
    if hook is None:
        raise UserError(f"webhook {name}: no such webhook")
    session.delete(hook)


def list_webhooks(session: Session) -> list[dict[str, Any]]:
    return [
        {"name": h.name, "url": h.url, "events": h.events}
        for h in session.scalars(select(Webhook).order_by(Webhook.name))
    ]
