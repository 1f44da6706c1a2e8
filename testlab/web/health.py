"""/metrics (Prometheus text format) and /healthz.

/metrics joins two registries: the process's own (the engine's measurements when it runs in this
process, the live-update streams, the Python process) and a collector that reads the lab's state
from the database at each scrape (tasks queued and running, VMs by status per host, the engine's
last round, the notification backlog). Both endpoints are open, like most exporters: put the server
behind a proxy if its VM names are not for everyone.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Delivery, EngineLease, Host, Task, utcnow
from testlab.db.session import run_transaction
from testlab.domain.statuses import TaskStatus
from testlab.engine.lease import LEASE_ID

router = APIRouter(tags=["health"])

ENGINE_SILENT_AFTER = 60.0  # seconds without a planning round after which the engine counts as stuck
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def notification_backlog(session: Session) -> int:
    """Notifications waiting to be delivered (the outbox's pending rows)."""
    return session.scalar(select(func.count()).where(Delivery.status == "pending")) or 0


def engine_state(session: Session) -> dict:
    lease = session.get(EngineLease, LEASE_ID)
    now = utcnow()
    alive = lease is not None and bool(lease.holder) and lease.expires > now
    last = lease.last_round if lease is not None else None
    age = (now - last).total_seconds() if last is not None else None
    return {
        "alive": alive,
        "holder": lease.holder if alive else None,
        "last_round": last.isoformat(timespec="seconds") + "Z" if last else None,
        "last_round_age": round(age, 1) if age is not None else None,
        "planning": alive and age is not None and age < ENGINE_SILENT_AFTER,
    }


class LabCollector(Collector):
    """The lab's state, read from the database when Prometheus scrapes."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("testlab_tasks", "Tasks queued and running.", labels=["status"])
        vms = GaugeMetricFamily("testlab_vms", "VMs by host and status.", labels=["host", "status"])
        engine_up = GaugeMetricFamily("testlab_engine_up", "1 when an engine holds a live lease.")
        round_age = GaugeMetricFamily(
            "testlab_engine_last_round_age_seconds", "Seconds since the engine last finished a round."
        )
        backlog = GaugeMetricFamily("testlab_notification_backlog", "Notifications waiting to be delivered.")

        def read(session: Session) -> tuple:
            counts = dict(
                session.execute(
                    select(Task.status, func.count())
                    .where(Task.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
                    .group_by(Task.status)
                ).all()
            )
            by_host = session.execute(
                select(Host.name, VM.status, func.count())
                .join(Host, VM.host_id == Host.id)
                .group_by(Host.name, VM.status)
            ).all()
            return counts, by_host, engine_state(session), notification_backlog(session)

        counts, by_host, engine, pending = run_transaction(self.url, read, readonly=True)
        for status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            tasks.add_metric([status], counts.get(status, 0))
        for host, status, count in by_host:
            vms.add_metric([host, status], count)
        engine_up.add_metric([], 1 if engine["alive"] else 0)
        yield tasks
        yield vms
        yield engine_up
        if engine["last_round_age"] is not None:
            round_age.add_metric([], engine["last_round_age"])
            yield round_age
        backlog.add_metric([], pending)
        yield backlog


def lab_registry(url: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LabCollector(url))
    return registry


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.lab_metrics)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/healthz", summary="200 when the database answers and an engine plans; 503 otherwise")
def healthz(request: Request) -> Response:
    url = request.app.state.web.url
    try:
        engine = run_transaction(url, engine_state, readonly=True, attempts=1)
        database = "ok"
    except Exception as error:  # noqa: BLE001 - the answer is the health check's whole point
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return JSONResponse(
            {"ok": False, "database": f"unreachable: {first}", "engine": None}, status_code=503
        )
    ok = engine["planning"]
    return JSONResponse({"ok": ok, "database": database, "engine": engine}, status_code=200 if ok else 503)
