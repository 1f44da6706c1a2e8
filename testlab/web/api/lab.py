"""/api/v1/vms and /api/v1/hosts: list, show, change (administrators), power cycle, histories, and
the live stream of VM changes that feeds the board."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Blocked, Host, Task
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.engine.options import EngineOptions
from testlab.services import vms as vm_service
from testlab.services.errors import UserError
from testlab.services.history import events_page
from testlab.services.hosts import power_cycle
from testlab.services.views import host_view, list_vms, vm_view
from testlab.web.api.models import (
    PROBLEMS,
    EventPage,
    HostChange,
    HostPage,
    HostView,
    Message,
    PowerCycle,
    VMChange,
    VMPage,
    VMView,
)
from testlab.web.auth import Requester, admin, reader
from testlab.web.context import WebContext, web
from testlab.web.live import KEEPALIVE, SSE_HEADERS, sse

router = APIRouter(prefix="/api/v1", tags=["lab"], responses=PROBLEMS)

Name = PathParam(min_length=1, max_length=100, pattern=r"^[^\x00/]+$")
Before = Query(None, ge=1, le=2**62, description="The `next` of the previous page")


@router.get("/vms", response_model=None, responses={200: {"model": VMPage}}, summary="List VMs by name")
def vms(
    request: Request,
    host: str | None = Query(None, max_length=100),
    status: str | None = Query(None, max_length=20),
    after: str | None = Query(None, max_length=100, description="The `next` of the previous page"),
    limit: int = Query(200, ge=1, le=1000),
    who: Requester = Depends(reader),
) -> dict:
    rows = web(request).read(lambda s: list_vms(s, host=host, status=status, after=after, limit=limit + 1))
    return {"vms": rows[:limit], "next": rows[limit - 1]["name"] if len(rows) > limit else None}


@router.get("/vms/{name}", response_model=None, responses={200: {"model": VMView}}, summary="A VM")
def show_vm(request: Request, name: str = Name, who: Requester = Depends(reader)) -> dict:
    def work(s: Session) -> dict:
        vm = vm_service.get_vm(s, name)
        return vm_view(vm, vm.host.name)

    return web(request).read(work)


@router.post("/vms/{name}/change", response_model=Message, summary="Maintenance, offline, enable (admin)")
def change_vm(request: Request, body: VMChange, name: str = Name, who: Requester = Depends(admin)) -> dict:
    if body.abort and body.change != "maintenance":
        raise UserError("abort only goes with maintenance")
    by = who.name
    act = {
        "maintenance": lambda s, vm: vm_service.request_maintenance(s, vm, abort=body.abort, by=by),
        "no-maintenance": lambda s, vm: vm_service.end_maintenance(s, vm, by=by),
        "offline": lambda s, vm: vm_service.set_offline(s, vm, by=by),
        "enable": lambda s, vm: vm_service.enable(s, vm, by=by),
    }[body.change]
    return {"message": web(request).write(lambda s: act(s, vm_service.get_vm(s, name)), by=by)}


@router.get(
    "/vms/{name}/events",
    response_model=None,
    responses={200: {"model": EventPage}},
    summary="A VM's event history",
)
def vm_events(
    request: Request,
    name: str = Name,
    before: int | None = Before,
    limit: int = Query(50, ge=1, le=500),
    who: Requester = Depends(reader),
) -> dict:
    events = web(request).read(
        lambda s: events_page(s, vm_id=vm_service.get_vm(s, name).id, before=before, limit=limit)
    )
    return {"events": events, "next": events[-1]["id"] if len(events) == limit else None}


def list_hosts_page(session: Session, after: str | None, limit: int) -> list[dict]:
    query = select(Host).order_by(Host.name).limit(limit)
    if after:
        query = query.where(Host.name > after)
    hosts = session.scalars(query).all()
    ids = [h.id for h in hosts]
    counts = (
        dict(
            session.execute(
                select(VM.host_id, func.count()).where(VM.host_id.in_(ids)).group_by(VM.host_id)
            ).all()
        )
        if ids
        else {}
    )
    return [host_view(h, counts.get(h.id, 0)) for h in hosts]


@router.get("/hosts", response_model=None, responses={200: {"model": HostPage}}, summary="List hosts by name")
def hosts(
    request: Request,
    after: str | None = Query(None, max_length=100),
    limit: int = Query(100, ge=1, le=1000),
    who: Requester = Depends(reader),
) -> dict:
    rows = web(request).read(lambda s: list_hosts_page(s, after, limit + 1))
    return {"hosts": rows[:limit], "next": rows[limit - 1]["name"] if len(rows) > limit else None}


@router.get("/hosts/{name}", response_model=None, responses={200: {"model": HostView}}, summary="A host")
def show_host(request: Request, name: str = Name, who: Requester = Depends(reader)) -> dict:
    def work(s: Session) -> dict:
        host = vm_service.get_host(s, name)
        view = host_view(host, s.scalar(select(func.count()).where(VM.host_id == host.id)) or 0)
        view["status_reason"] = host.status_reason
        view["free_disk_bytes"] = host.free_disk_bytes
        return view

    return web(request).read(work)


@router.post("/hosts/{name}/change", response_model=Message, summary="Mark a host up or down (admin)")
def change_host(
    request: Request, body: HostChange, name: str = Name, who: Requester = Depends(admin)
) -> dict:
    return {
        "message": web(request).write(
            lambda s: vm_service.set_host_status(s, vm_service.get_host(s, name), body.status, by=who.name),
            by=who.name,
        )
    }


@router.post(
    "/hosts/{name}/power-cycle",
    response_model=Message,
    summary="Run the host's power-cycle command; its running tasks are requeued (admin)",
)
def power_cycle_host(
    request: Request, body: PowerCycle | None = None, name: str = Name, who: Requester = Depends(admin)
) -> dict:
    context = web(request)
    timeout = min(max((body or PowerCycle()).timeout, 1.0), 3600.0)
    message = power_cycle(
        context.url,
        name,
        timeout=timeout,
        by=who.name,
        max_tries=EngineOptions.from_env().max_tries,
        jobs_dir=context.settings.jobs_dir,
    )
    return {"message": message}


@router.get(
    "/hosts/{name}/events",
    response_model=None,
    responses={200: {"model": EventPage}},
    summary="A host's event history",
)
def host_events(
    request: Request,
    name: str = Name,
    before: int | None = Before,
    limit: int = Query(50, ge=1, le=500),
    who: Requester = Depends(reader),
) -> dict:
    events = web(request).read(
        lambda s: events_page(s, host_id=vm_service.get_host(s, name).id, before=before, limit=limit)
    )
    return {"events": events, "next": events[-1]["id"] if len(events) == limit else None}


# ------------------------------------------------------------------------------------ the board


def board_vms(
    session: Session, vm_ids: list[int] | None = None, host_names: list[str] | None = None
) -> list[dict]:
    """VM views for the board, each with the task it runs (if any) and why queued work waits for it."""
    query = select(VM, Host.name).join(Host, VM.host_id == Host.id).order_by(Host.name, VM.name)
    if vm_ids is not None:
        query = query.where(VM.id.in_(vm_ids))
    if host_names is not None:
        query = query.where(Host.name.in_(host_names))
    rows = session.execute(query).all()
    ids = [vm.id for vm, _ in rows]
    running = (
        {
            vm_id: (task_id, job_id)
            for vm_id, task_id, job_id in session.execute(
                select(Task.vm_id, Task.id, Task.job_id).where(
                    Task.status == TaskStatus.RUNNING, Task.vm_id.in_(ids)
                )
            )
        }
        if ids
        else {}
    )
    names = [f"vm {vm.name}" for vm, _ in rows]
    blocked = (
        dict(session.execute(select(Blocked.subject, Blocked.reason).where(Blocked.subject.in_(names))).all())
        if names
        else {}
    )
    views = []
    for vm, host in rows:
        view = vm_view(vm, host)
        task = running.get(vm.id)
        view["task"] = {"id": task[0], "job": task[1]} if task else None
        view["blocked"] = blocked.get(f"vm {vm.name}")
        view["enabled"] = vm.status not in (VMStatus.MAINTENANCE, VMStatus.OFFLINE)
        views.append(view)
    return views


@router.get(
    "/board/stream",
    summary="Server-sent events: `vms` with the VMs that changed (all of them on a reconnect)",
    response_class=StreamingResponse,
)
def board_stream(
    request: Request,
    host: list[str] | None = Query(None, description="Only the VMs of these hosts"),
    who: Requester = Depends(reader),
) -> StreamingResponse:
    return StreamingResponse(
        _board_changes(web(request), request, host), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _board_changes(
    context: WebContext, request: Request, hosts: list[str] | None
) -> AsyncIterator[str]:
    watcher = context.watcher
    async with watcher.listening():
        seen = watcher.change.last
        while not await request.is_disconnected():
            change = await watcher.next_change(seen, context.options.live_keepalive)
            if change is None:
                yield KEEPALIVE
                continue
            everything = change.missed_by(seen)
            seen = change.last
            if not everything and not change.vms:
                continue
            ids = None if everything else sorted(change.vms)
            views = await asyncio.to_thread(
                watcher.read, functools.partial(board_vms, vm_ids=ids, host_names=hosts)
            )
            if views:
                yield sse("vms", views, seen)


def metrics_summary(session: Session) -> dict:
    """The lab at a glance, for page headers: tasks queued and running, VMs by status."""
    tasks = dict(
        session.execute(
            select(Task.status, func.count())
            .where(Task.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
            .group_by(Task.status)
        ).all()
    )
    vms = dict(session.execute(select(VM.status, func.count()).group_by(VM.status)).all())
    return {
        "queued": tasks.get(TaskStatus.QUEUED, 0),
        "running": tasks.get(TaskStatus.RUNNING, 0),
        "vms": vms,
    }
