"""/api/v1/tasks: a task's log (by byte range, or live) and its artifacts."""

from __future__ import annotations

import asyncio
import mimetypes
import re
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from testlab.db.models import VM, Task
from testlab.domain.statuses import TaskStatus
from testlab.services.errors import NotFound
from testlab.services.outputs import artifact_file, list_artifacts, log_path, log_size, read_log
from testlab.services.views import iso_time
from testlab.web.api.models import PROBLEMS, ArtifactList
from testlab.web.auth import Requester, reader
from testlab.web.context import WebContext, web
from testlab.web.live import KEEPALIVE, SSE_HEADERS, sse

router = APIRouter(prefix="/api/v1", tags=["tasks"], responses=PROBLEMS)

TaskId = PathParam(ge=1, le=2**31 - 1, description="A task's id")
MAX_CHUNK = 1 << 20  # bytes of log per request or per live message
# Served as downloads, never rendered: an artifact comes from a VM and must not run on this origin.
ACTIVE_TYPES = ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id}: no such task")
    return task


def task_info(session: Session, task_id: int) -> dict:
    task = get_task(session, task_id)
    vm = session.get(VM, task.vm_id)
    return {
        "id": task.id,
        "job": task.job_id,
        "vm": vm.name if vm else None,
        "status": task.status,
        "tries": task.tries,
        "exit_code": task.exit_code,
        "detail": task.detail,
        "started": iso_time(task.started),
        "ended": iso_time(task.ended),
    }


@router.get("/tasks/{task_id}", summary="A task, with its job id and log size")
def show_task(request: Request, task_id: int = TaskId, who: Requester = Depends(reader)) -> dict:
    context = web(request)
    info = context.read(lambda s: task_info(s, task_id))
    info["log_size"] = log_size(log_path(context.settings, info["job"], task_id))
    return info


@router.get(
    "/tasks/{task_id}/log",
    summary="A task's log, or a byte range of it (`offset`/`limit`, or a Range header)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 206: {"content": {"text/plain": {}}}},
)
def task_log(
    request: Request,
    task_id: int = TaskId,
    offset: int = Query(0, ge=0, le=2**62),
    limit: int = Query(MAX_CHUNK, ge=1, le=MAX_CHUNK),
    range_header: str | None = Header(None, alias="range"),
    who: Requester = Depends(reader),
) -> Response:
    context = web(request)
    job_id = context.read(lambda s: get_task(s, task_id).job_id)
    path = log_path(context.settings, job_id, task_id)
    status = 200
    if range_header:
        match = _RANGE.match(range_header.strip())
        if match and (match.group(1) or match.group(2)):
            size = log_size(path)
            first, last = match.group(1), match.group(2)
            if first:
                offset = int(first)
                limit = min(MAX_CHUNK, (int(last) - offset + 1) if last else MAX_CHUNK)
            else:  # the last N bytes
                offset = max(0, size - int(last))
                limit = min(MAX_CHUNK, size - offset)
            status = 206
            if offset >= size or limit <= 0:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    data, size = read_log(path, offset, limit)
    headers = {"X-Log-Size": str(size), "X-Log-Offset": str(offset), "Accept-Ranges": "bytes"}
    if status == 206:
        headers["Content-Range"] = f"bytes {offset}-{offset + len(data) - 1}/{size}"
    return Response(data, status_code=status, media_type="text/plain; charset=utf-8", headers=headers)


@router.get(
    "/tasks/{task_id}/log/stream",
    summary="Server-sent events: `log` chunks as the log grows, `reset` when it was cut, `end` at the end",
    response_class=StreamingResponse,
)
def task_log_stream(
    request: Request,
    task_id: int = TaskId,
    offset: int = Query(0, ge=0, le=2**62),
    last_event_id: str | None = Header(None, alias="last-event-id"),
    who: Requester = Depends(reader),
) -> StreamingResponse:
    context = web(request)
    job_id = context.read(lambda s: get_task(s, task_id).job_id)
    if last_event_id and last_event_id.isdigit():  # a reconnecting EventSource resumes where it was
        offset = int(last_event_id)
    path = log_path(context.settings, job_id, task_id)
    return StreamingResponse(
        _follow(context, request, task_id, path, offset), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _follow(
    context: WebContext, request: Request, task_id: int, path: Path, offset: int
) -> AsyncIterator[str]:
    """Send what the log gains. Its size is looked at (a stat, no database) every `live_log_poll`
    seconds and whenever the event history moves; the task's status is read again only when the history
    says the task moved, and its log at once then: the engine writes a task's last bytes before its end,
    so they and the `end` reach the page with the job's new status, not a log poll later."""
    watcher = context.watcher
    poll = context.options.live_log_poll
    loop = asyncio.get_running_loop()
    async with watcher.listening():
        seen = watcher.change.last
        status = await asyncio.to_thread(watcher.read, lambda s: get_task(s, task_id).status)
        quiet = 0.0
        while not await request.is_disconnected():
            data, size = await asyncio.to_thread(read_log, path, offset, MAX_CHUNK)
            if size < offset:  # the engine cut the log to its end: start again from its top
                offset = 0
                yield sse("reset", {"size": size}, 0)
                continue
            if data:
                text = data.decode("utf-8", errors="replace")
                yield sse("log", {"offset": offset, "text": text}, offset + len(data))
                offset += len(data)
                quiet = 0.0
                if len(data) == MAX_CHUNK or status in TaskStatus.FINAL:
                    continue  # more to send, or the end to send once nothing is left
            if status in TaskStatus.FINAL and not data:
                yield sse("end", {"status": status, "size": offset})
                return
            if status == TaskStatus.QUEUED and offset > 0 and size == 0:
                offset = 0  # requeued: a new try writes a new log
            change = watcher.change
            if change.last != seen:
                moved = change.missed_by(seen) or task_id in change.tasks
                seen = change.last
                if moved:
                    status = await asyncio.to_thread(watcher.read, lambda s: get_task(s, task_id).status)
                    continue
            began = loop.time()
            await watcher.next_change(seen, poll)
            quiet += loop.time() - began
            if quiet >= context.options.live_keepalive:
                quiet = 0.0
                yield KEEPALIVE


@router.get("/tasks/{task_id}/artifacts", response_model=ArtifactList, summary="A task's artifacts")
def artifacts(request: Request, task_id: int = TaskId, who: Requester = Depends(reader)) -> dict:
    context = web(request)
    job_id = context.read(lambda s: get_task(s, task_id).job_id)
    return {"task": task_id, "artifacts": list_artifacts(context.settings, job_id, task_id)}


@router.get(
    "/tasks/{task_id}/artifacts/{path:path}",
    summary="Download one artifact",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def artifact(
    request: Request, path: str, task_id: int = TaskId, who: Requester = Depends(reader)
) -> Response:
    context = web(request)
    job_id = context.read(lambda s: get_task(s, task_id).job_id)
    found = artifact_file(context.settings, job_id, task_id, path)
    kind, encoding = mimetypes.guess_type(found.name)
    if kind is None or encoding is not None:
        kind = "application/octet-stream"
    if kind.startswith("text/") and kind not in ACTIVE_TYPES:
        kind += "; charset=utf-8"
    active = kind.split(";")[0] in ACTIVE_TYPES
    return FileResponse(
        found,
        media_type=kind,
        filename=found.name if active else None,
        content_disposition_type="attachment" if active else "inline",
        headers={"Content-Security-Policy": "sandbox; default-src 'none'"},
    )
