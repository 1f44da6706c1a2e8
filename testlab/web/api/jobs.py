"""/api/v1/jobs: submit, list, show, cancel, restart, history, live changes."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from testlab.domain.errors import DefinitionError
from testlab.domain.jobfile import JobDef, parse_job_text
from testlab.domain.statuses import TaskStatus
from testlab.services.errors import UserError
from testlab.services.history import events_page
from testlab.services.jobs import cancel_job, get_job, restart_job, submit_job
from testlab.services.results import job_results, ordered
from testlab.services.views import job_view, list_jobs
from testlab.web.api.models import PROBLEMS, EventPage, JobPage, JobView, Message, Submitted
from testlab.web.auth import AuthProblem, Requester, reader, user
from testlab.web.context import WebContext, web
from testlab.web.live import KEEPALIVE, SSE_HEADERS, sse

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=PROBLEMS)

MAX_ID = 2**31 - 1
JobId = PathParam(ge=1, le=MAX_ID, description="A job's id")
Status = Enum("Status", {s: s for s in sorted(TaskStatus.ALL)}, type=str)  # type: ignore[misc]


@router.get(
    "/jobs", response_model=None, responses={200: {"model": JobPage}}, summary="List jobs, newest first"
)
def jobs(
    request: Request,
    status: Status | None = None,
    owner: str | None = Query(None, max_length=100),
    name: str | None = Query(None, max_length=200, description="The job's exact name"),
    before: int | None = Query(None, ge=1, le=MAX_ID, description="The `next` of the previous page"),
    limit: int = Query(50, ge=1, le=500),
    who: Requester = Depends(reader),
) -> dict:
    rows = web(request).read(
        lambda s: list_jobs(
            s, status.value if status else None, limit + 1, owner=owner, name=name, before=before
        )
    )
    return {"jobs": rows[:limit], "next": rows[limit - 1]["id"] if len(rows) > limit else None}


@router.post(
    "/jobs",
    status_code=201,
    response_model=Submitted,
    summary="Submit a job: the job file in `job`, each of its files in a `file` field",
)
def submit(
    request: Request,
    job: UploadFile = File(..., description="The job file (YAML)"),
    file: list[UploadFile] = File(
        default=[], description="A file of the job; its filename is its path relative to the job file"
    ),
    priority: int | None = Form(None, ge=-1_000_000, le=1_000_000, description="Override the priority"),
    who: Requester = Depends(user),
) -> dict:
    context = web(request)
    sizes = [upload.size or 0 for upload in (job, *file)]
    if sum(sizes) > context.options.max_upload_bytes:
        raise UserError(f"the job's files exceed {context.options.max_upload_bytes} bytes")
    context.settings.home.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".upload-", dir=context.settings.home))
    try:
        definition = _receive(scratch, job, file)
        job_id = context.write(
            lambda s: submit_job(s, context.settings, definition, owner=who.name, priority=priority),
            by=who.name,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"id": job_id, "url": f"/jobs/{job_id}"}


def _receive(scratch: Path, job: UploadFile, files: list[UploadFile]) -> JobDef:
    """Write the upload into a scratch folder and parse it with the CLI's parser, so a job file is
    accepted or refused, with the same message, whichever way it comes."""
    name = PurePosixPath((job.filename or "job.yaml").replace("\\", "/")).name or "job.yaml"
    data = job.file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DefinitionError("not UTF-8 text", source=name, line=line) from None
    base = scratch / "files"
    base.mkdir()
    seen: set[str] = set()
    for upload in files:
        relative = (upload.filename or "").replace("\\", "/")
        parts = PurePosixPath(relative).parts
        if not relative or relative.startswith("/") or any(p in (".", "..") for p in parts):
            raise UserError(f"file {relative!r}: give its path relative to the job file, inside its folder")
        if relative in seen:
            raise UserError(f"file {relative!r} sent twice")
        seen.add(relative)
        target = base / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            shutil.copyfileobj(upload.file, out)
    definition = parse_job_text(text, source=name, base_dir=base)
    source = scratch / "job.yaml"
    source.write_text(text, encoding="utf-8")
    return dataclasses.replace(definition, source=source)


@router.get(
    "/jobs/{job_id}",
    response_model=None,
    responses={200: {"model": JobView}},
    summary="A job with its steps and tasks",
)
def show(request: Request, job_id: int = JobId, who: Requester = Depends(reader)) -> dict:
    return web(request).read(lambda s: job_view(s, get_job(s, job_id)))


def _owned(context: WebContext, who: Requester, job_id: int) -> None:
    owner = context.read(lambda s: get_job(s, job_id).owner)
    if not who.may_change_job(owner):
        raise AuthProblem(
            403, f"job {job_id} belongs to {owner}; only they or an administrator may change it"
        )


@router.post("/jobs/{job_id}/cancel", response_model=Message, summary="Cancel a job")
def cancel(request: Request, job_id: int = JobId, who: Requester = Depends(user)) -> dict:
    context = web(request)
    _owned(context, who, job_id)
    status = context.write(lambda s: cancel_job(s, job_id).status, by=who.name)
    return {"message": f"job {job_id}: cancel requested ({status})", "status": status}


@router.post("/jobs/{job_id}/restart", response_model=Message, summary="Run an ended job again")
def restart(request: Request, job_id: int = JobId, who: Requester = Depends(user)) -> dict:
    context = web(request)
    _owned(context, who, job_id)
    status = context.write(lambda s: restart_job(s, context.settings, job_id).status, by=who.name)
    return {"message": f"job {job_id} requeued", "status": status}


@router.get("/jobs/{job_id}/results", summary="The job's test cases, new failures first")
def results(
    request: Request,
    job_id: int = JobId,
    failing: bool = Query(False, description="Only the failing cases"),
    limit: int = Query(1000, ge=1, le=10_000),
    who: Requester = Depends(reader),
) -> dict:
    def work(s) -> dict:
        job = get_job(s, job_id)
        cases = ordered(job_results(s, job, failing_only=failing))
        return {"job": job_id, "cases": [c.as_dict() for c in cases[:limit]], "more": len(cases) > limit}

    return web(request).read(work)


@router.get(
    "/jobs/{job_id}/events",
    response_model=None,
    responses={200: {"model": EventPage}},
    summary="The job's event history",
)
def job_events(
    request: Request,
    job_id: int = JobId,
    before: int | None = Query(None, ge=1, le=2**62),
    limit: int = Query(50, ge=1, le=500),
    who: Requester = Depends(reader),
) -> dict:
    def work(s):
        get_job(s, job_id)
        return events_page(s, job_id=job_id, before=before, limit=limit)

    events = web(request).read(work)
    return {"events": events, "next": events[-1]["id"] if len(events) == limit else None}


@router.get(
    "/jobs/{job_id}/stream",
    summary="Server-sent events: `job` whenever the job changes (status, tasks)",
    response_class=StreamingResponse,
)
def job_stream(request: Request, job_id: int = JobId, who: Requester = Depends(reader)) -> StreamingResponse:
    context = web(request)
    first = context.read(lambda s: get_job(s, job_id).status)
    return StreamingResponse(
        _job_changes(context, request, job_id, first), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _job_changes(context: WebContext, request: Request, job_id: int, status: str) -> AsyncIterator[str]:
    import asyncio

    watcher = context.watcher
    async with watcher.listening():
        seen = watcher.change.last
        yield sse("job", {"id": job_id, "status": status}, seen)
        while not await request.is_disconnected():
            change = await watcher.next_change(seen, context.options.live_keepalive)
            if change is None:
                yield KEEPALIVE
                continue
            moved = change.missed_by(seen) or job_id in change.jobs
            seen = change.last
            if moved:
                status = await asyncio.to_thread(watcher.read, lambda s: get_job(s, job_id).status)
                yield sse("job", {"id": job_id, "status": status}, seen)
