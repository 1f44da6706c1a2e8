"""The HTML pages: server-rendered (Jinja2), a little JavaScript for live updates (static/app.js).

Every list is paginated in the database (keyset on an index), so a page reads what it shows and no
more. Forms carry the session's CSRF token; the same changes are made through the same services as
the API and the CLI.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Blocked, Host, Task, utcnow
from testlab.domain.durations import format_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.services import users as user_service
from testlab.services import vms as vm_service
from testlab.services.errors import UserError
from testlab.services.history import events_page, vm_history_before_task
from testlab.services.jobs import cancel_job, get_job, restart_job
from testlab.services.outputs import list_artifacts, log_path, log_size
from testlab.services.results import job_results, ordered
from testlab.services.stats import activity, statistics
from testlab.services.views import host_view, job_view, list_jobs
from testlab.web import charts
from testlab.web.api import jobs as jobs_api
from testlab.web.api import lab as lab_api
from testlab.web.api import tasks as tasks_api
from testlab.web.api.models import HostChange, VMChange
from testlab.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    AuthProblem,
    Requester,
    admin,
    reader,
    user,
)
from testlab.web.context import web
from testlab.web.errors import RateLimited
from testlab.web.health import engine_state

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(str(resources.files("testlab.web") / "templates"))))

JOBS_PER_PAGE = 50
HOSTS_PER_PAGE = 12
MAX_CASES = 200  # failing test cases shown on a job page, new ones first
CHIPS_UP_TO = 40  # a job with more tasks shows counts by status instead of one chip per task
FAILED = (TaskStatus.FAILED, TaskStatus.BOTERROR, TaskStatus.TIMEOUT)
JobId = PathParam(ge=1, le=2**31 - 1)
Name = PathParam(min_length=1, max_length=100, pattern=r"^[^\x00/]+$")


# ----------------------------------------------------------------------------------- formatting


def _ago(value: str | None) -> str:
    if not value:
        return ""
    seconds = (utcnow() - datetime.fromisoformat(value.rstrip("Z"))).total_seconds()
    if seconds < 5:
        return "just now"
    return f"{format_duration(round(seconds) if seconds < 3600 else round(seconds / 60) * 60)} ago"


def _took(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    finish = datetime.fromisoformat(end.rstrip("Z")) if end else utcnow()
    seconds = max(0.0, (finish - datetime.fromisoformat(start.rstrip("Z"))).total_seconds())
    return format_duration(round(seconds)) if seconds >= 1 else f"{seconds:.1f}s"


def _size(count: int | None) -> str:
    if count is None:
        return ""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 10 else format_duration(round(value))


templates.env.filters.update(ago=_ago, size=_size, seconds=_seconds)
templates.env.globals.update(took=_took, FINAL=TaskStatus.FINAL)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    who: Requester = getattr(request.state, "requester", None) or Requester(None, "anonymous")
    try:
        engine = web(request).read(engine_state)
    except Exception:  # noqa: BLE001 - the header's engine light must never break a page
        engine = None
    return templates.TemplateResponse(
        request,
        template,
        {"who": who, "csrf": who.csrf or "", "engine": engine, "path": request.url.path, **context},
        status_code=status_code,
    )


def error_page(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    response = render(request, "error.html", status_code=status, status=status, message=message)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path on this server: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/jobs"
    return target


# ----------------------------------------------------------------------------------------- login


@router.get("/")
def home() -> RedirectResponse:
    return _back("/jobs")


@router.get("/login")
def login_page(request: Request, next: str | None = Query(None, max_length=2000)) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token, next=_safe_next(next), problem=None)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=web(request).options.secure_cookies
    )
    return response


@router.post("/login")
def login(
    request: Request,
    name: str = Form(..., max_length=100),
    password: str = Form(..., max_length=1000),
    csrf_token: str = Form("", max_length=200),
    next: str = Form("/jobs", max_length=2000),
) -> Response:
    context = web(request)
    options = context.options
    sent = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not secrets.compare_digest(sent, csrf_token):
        raise AuthProblem(403, "the login form expired: reload the page and try again")
    address = request.client.host if request.client else "unknown"
    by_name, by_address = context.read(
        lambda s: user_service.recent_failures(s, name, address, options.login_window)
    )
    if by_name >= options.login_max_per_name or by_address >= options.login_max_per_address:
        minutes = max(1, round(options.login_window / 60))
        raise RateLimited(
            f"too many failed logins: try again in {minutes} minutes", int(options.login_window)
        )
    identity = context.read(lambda s: user_service.check_password(s, name, password))
    if identity is None:
        context.write(lambda s: user_service.record_failure(s, name, address, options.login_window), by="web")
        token = secrets.token_urlsafe(24)
        response = render(
            request,
            "login.html",
            status_code=401,
            login_csrf=token,
            next=_safe_next(next),
            problem="wrong user name or password",
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=options.secure_cookies
        )
        return response
    secret, _ = context.write(
        lambda s: user_service.open_session(s, identity, options.session_hours * 3600), by=identity.name
    )
    response = _back(_safe_next(next))
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(options.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=options.secure_cookies,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, who: Requester = Depends(user)) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        web(request).write(lambda s: user_service.close_session(s, secret), by=who.name)
    response = _back("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/account")
def account(request: Request, who: Requester = Depends(user)) -> Response:
    tokens = web(request).read(lambda s: user_service.list_tokens(s, who.name))
    return render(request, "account.html", tokens=tokens, new_token=None)


@router.post("/account/tokens")
def new_token(
    request: Request,
    name: str = Form("", max_length=100),
    days: float = Form(90, ge=0, le=3650),
    who=Depends(user),
) -> Response:
    context = web(request)
    lifetime = days * 86400 if days > 0 else None
    token = context.write(
        lambda s: user_service.add_token(s, who.name, name=name, lifetime=lifetime), by=who.name
    )
    tokens = context.read(lambda s: user_service.list_tokens(s, who.name))
    return render(request, "account.html", tokens=tokens, new_token=token)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(
    request: Request, token_id: int = PathParam(ge=1, le=2**31 - 1), who=Depends(user)
) -> Response:
    web(request).write(lambda s: user_service.revoke_tokens(s, who.name, token_id), by=who.name)
    return _back("/account")


# ------------------------------------------------------------------------------------------ jobs


def _chips(session: Session, jobs: list[dict]) -> dict[int, list[dict]]:
    small = [j["id"] for j in jobs if sum(j["tasks"].values()) <= CHIPS_UP_TO]
    chips: dict[int, list[dict]] = {}
    if small:
        rows = session.execute(
            select(Task.job_id, Task.id, Task.status, VM.name)
            .outerjoin(VM, Task.vm_id == VM.id)
            .where(Task.job_id.in_(small))
            .order_by(Task.job_id, Task.step_id, Task.number)
        )
        for job_id, task_id, status, vm in rows:
            chips.setdefault(job_id, []).append({"id": task_id, "status": status, "vm": vm})
    return chips


@router.get("/jobs")
def queue(
    request: Request,
    status: str | None = Query(None, max_length=20),
    owner: str | None = Query(None, max_length=100),
    name: str | None = Query(None, max_length=200),
    before: int | None = Query(None, ge=1, le=2**31 - 1),
    who: Requester = Depends(reader),
) -> Response:
    status = status if status in TaskStatus.ALL else None
    owner, name = owner or None, name or None

    def work(s: Session) -> tuple[list[dict], dict, dict]:
        jobs = list_jobs(s, status, JOBS_PER_PAGE + 1, owner=owner, name=name, before=before)
        return jobs, _chips(s, jobs[:JOBS_PER_PAGE]), lab_api.metrics_summary(s)

    jobs, chips, summary = web(request).read(work)
    more = len(jobs) > JOBS_PER_PAGE
    jobs = jobs[:JOBS_PER_PAGE]
    filters = {k: v for k, v in (("status", status), ("owner", owner), ("name", name)) if v}
    older = f"/jobs?{urlencode({**filters, 'before': jobs[-1]['id']})}" if more else None
    newest = f"/jobs?{urlencode(filters)}" if before else None
    return render(
        request,
        "jobs.html",
        jobs=jobs,
        chips=chips,
        summary=summary,
        filters=filters,
        statuses=sorted(TaskStatus.ALL),
        older=older,
        newest=newest,
    )


def _job_page_data(session: Session, settings, job_id: int) -> dict:
    job = get_job(session, job_id)
    view = job_view(session, job)
    failed = [
        task
        for step in view["steps"]
        for task in step["tasks"]
        if task["status"] in FAILED or (task["failures"] or 0) > 0
    ]
    histories = {}
    for task in failed[:20]:
        row = session.get(Task, task["id"])
        histories[task["id"]] = vm_history_before_task(session, row, limit=6)
    outputs = {}
    for step in view["steps"]:
        for task in step["tasks"]:
            if task["started"]:
                outputs[task["id"]] = {
                    "log": log_size(log_path(settings, job_id, task["id"])),
                    "artifacts": list_artifacts(settings, job_id, task["id"])[:50],
                }
    # New failures (test failures, then failed tasks) first: what needs a look comes first.
    failed.sort(key=lambda t: (-(t["failures"] or 0), t["status"] != TaskStatus.FAILED, t["id"]))
    events = events_page(session, job_id=job_id, limit=15)
    cases = [c.as_dict() for c in ordered(job_results(session, job, failing_only=True))[:MAX_CASES]]
    return {
        "job": view,
        "failed": failed,
        "histories": histories,
        "outputs": outputs,
        "events": events,
        "cases": cases,
    }


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: int = JobId, who: Requester = Depends(reader)) -> Response:
    context = web(request)
    data = context.read(lambda s: _job_page_data(s, context.settings, job_id))
    return render(request, "job.html", may_change=who.may_change_job(data["job"]["owner"]), **data)


@router.get("/jobs/{job_id}/fragment")
def job_fragment(request: Request, job_id: int = JobId, who: Requester = Depends(reader)) -> Response:
    """The changing part of a job page, fetched by the page's script when the job moves."""
    context = web(request)
    data = context.read(lambda s: _job_page_data(s, context.settings, job_id))
    return render(request, "_job_body.html", may_change=who.may_change_job(data["job"]["owner"]), **data)


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: int = JobId, who: Requester = Depends(user)) -> Response:
    context = web(request)
    jobs_api._owned(context, who, job_id)
    context.write(lambda s: cancel_job(s, job_id).status, by=who.name)
    return _back(f"/jobs/{job_id}")


@router.post("/jobs/{job_id}/restart")
def restart(request: Request, job_id: int = JobId, who: Requester = Depends(user)) -> Response:
    context = web(request)
    jobs_api._owned(context, who, job_id)
    context.write(lambda s: restart_job(s, context.settings, job_id).status, by=who.name)
    return _back(f"/jobs/{job_id}")


@router.get("/tasks/{task_id}")
def task_page(
    request: Request, task_id: int = PathParam(ge=1, le=2**31 - 1), who=Depends(reader)
) -> Response:
    context = web(request)

    def work(s: Session) -> dict:
        info = tasks_api.task_info(s, task_id)
        return {"task": info, "job": job_view(s, get_job(s, info["job"]))}

    data = context.read(work)
    data["log_size"] = log_size(log_path(context.settings, data["task"]["job"], task_id))
    data["artifacts"] = list_artifacts(context.settings, data["task"]["job"], task_id)
    return render(request, "task.html", **data)


# ---------------------------------------------------------------------------------------- submit


@router.get("/submit")
def submit_page(request: Request, who: Requester = Depends(user)) -> Response:
    return render(request, "submit.html", problem=None)


@router.post("/submit")
def submit(
    request: Request,
    job: UploadFile = File(...),
    file: list[UploadFile] = File(default=[]),
    priority: str = Form("", max_length=20),
    who: Requester = Depends(user),
) -> Response:
    try:
        value = int(priority) if priority.strip() else None
    except ValueError:
        return render(
            request, "submit.html", status_code=422, problem=f"priority: not a number: {priority!r}"
        )
    try:
        job_id = jobs_api.submit(
            request, job=job, file=[f for f in file if f.filename], priority=value, who=who
        )["id"]
    except (DefinitionError, UserError) as error:
        return render(request, "submit.html", status_code=422, problem=str(error))
    return _back(f"/jobs/{job_id}")


# ----------------------------------------------------------------------------------- VMs, hosts


@router.get("/vms")
def board(
    request: Request,
    after: str | None = Query(None, max_length=100, description="the last host of the previous page"),
    who: Requester = Depends(reader),
) -> Response:
    def work(s: Session) -> dict:
        hosts = lab_api.list_hosts_page(s, after, HOSTS_PER_PAGE + 1)
        more = len(hosts) > HOSTS_PER_PAGE
        hosts = hosts[:HOSTS_PER_PAGE]
        names = [h["name"] for h in hosts]
        vms = lab_api.board_vms(s, host_names=names) if names else []
        rows = s.execute(select(Host).where(Host.name.in_(names))).scalars().all() if names else []
        extra = {h.name: {"reason": h.status_reason, "free_disk": h.free_disk_bytes} for h in rows}
        engine_blocked = s.get(Blocked, "engine")
        return {
            "hosts": hosts,
            "vms": vms,
            "extra": extra,
            "more": more,
            "summary": lab_api.metrics_summary(s),
            "engine_blocked": engine_blocked.reason if engine_blocked else None,
        }

    data = web(request).read(work)
    by_host: dict[str, list[dict]] = {}
    for vm in data["vms"]:
        by_host.setdefault(vm["host"], []).append(vm)
    next_page = f"/vms?{urlencode({'after': data['hosts'][-1]['name']})}" if data["more"] else None
    return render(
        request,
        "board.html",
        hosts=data["hosts"],
        by_host=by_host,
        extra=data["extra"],
        summary=data["summary"],
        engine_blocked=data["engine_blocked"],
        next_page=next_page,
        first_page="/vms" if after else None,
        host_names=[h["name"] for h in data["hosts"]],
    )


@router.post("/vms/{name}/change")
def change_vm(
    request: Request,
    name: str = Name,
    change: str = Form(..., max_length=20),
    abort: bool = Form(False),
    who: Requester = Depends(admin),
) -> Response:
    try:
        body = VMChange(change=change, abort=abort)
    except ValueError:
        raise UserError(f"unknown change {change!r}") from None
    lab_api.change_vm(request, body, name=name, who=who)
    return _back(request.headers.get("referer") or "/vms")


@router.get("/vms/{name}")
def vm_page(
    request: Request,
    name: str = Name,
    before: int | None = Query(None, ge=1, le=2**62),
    who: Requester = Depends(reader),
) -> Response:
    def work(s: Session) -> dict:
        vm = vm_service.get_vm(s, name)
        events = events_page(s, vm_id=vm.id, before=before, limit=50)
        return {"vm": lab_api.board_vms(s, vm_ids=[vm.id])[0], "events": events}

    data = web(request).read(work)
    older = f"/vms/{name}?before={data['events'][-1]['id']}" if len(data["events"]) == 50 else None
    return render(request, "vm.html", older=older, **data)


@router.get("/hosts/{name}")
def host_page(
    request: Request,
    name: str = Name,
    before: int | None = Query(None, ge=1, le=2**62),
    who: Requester = Depends(reader),
) -> Response:
    def work(s: Session) -> dict:
        host = vm_service.get_host(s, name)
        view = host_view(host, 0)
        view.update(
            status_reason=host.status_reason,
            free_disk=host.free_disk_bytes,
            commands=sorted(host.commands or {}),
        )
        events = events_page(s, host_id=host.id, before=before, limit=50)
        return {"host": view, "vms": lab_api.board_vms(s, host_names=[name]), "events": events}

    data = web(request).read(work)
    older = f"/hosts/{name}?before={data['events'][-1]['id']}" if len(data["events"]) == 50 else None
    return render(request, "host.html", older=older, **data)


@router.post("/hosts/{name}/change")
def change_host(
    request: Request,
    name: str = Name,
    status: str = Form(..., max_length=10),
    who: Requester = Depends(admin),
) -> Response:
    try:
        body = HostChange(status=status)
    except ValueError:
        raise UserError(f"host status must be up or down, not {status!r}") from None
    lab_api.change_host(request, body, name=name, who=who)
    return _back(f"/hosts/{name}")


@router.post("/hosts/{name}/power-cycle")
def power_cycle(request: Request, name: str = Name, who: Requester = Depends(admin)) -> Response:
    lab_api.power_cycle_host(request, None, name=name, who=who)
    return _back(f"/hosts/{name}")


# ---------------------------------------------------------------------------- activity, statistics

WINDOWS = (1, 3, 6, 12, 24, 72, 168)
TIMELINE_WINDOWS = (0.25, 1, 3, 6, 12, 24, 72, 168)


@router.get("/activity")
def activity_page(
    request: Request,
    hours: float = Query(6, ge=0.01, le=168),
    after: str | None = Query(None, max_length=100),
    who: Requester = Depends(reader),
) -> Response:
    def work(s: Session) -> tuple[dict, bool]:
        hosts = lab_api.list_hosts_page(s, after, HOSTS_PER_PAGE + 1)
        names = [h["name"] for h in hosts[:HOSTS_PER_PAGE]]
        return activity(s, hours=hours, hosts=names), len(hosts) > HOSTS_PER_PAGE

    data, more = web(request).read(work)
    last_host = data["vms"][-1]["host"] if data["vms"] else None
    next_page = f"/activity?{urlencode({'hours': hours, 'after': last_host})}" if more and last_host else None
    return render(
        request,
        "activity.html",
        data=data,
        chart=charts.timeline(data),
        hours=hours,
        windows=TIMELINE_WINDOWS,
        next_page=next_page,
        first_page=f"/activity?hours={hours}" if after else None,
        statuses=sorted(VMStatus.ALL - {VMStatus.OFF}),
    )


@router.get("/stats")
def stats_page(
    request: Request, hours: int = Query(24, ge=1, le=744), who: Requester = Depends(reader)
) -> Response:
    data = web(request).read(lambda s: statistics(s, hours=hours))
    vms = sorted(data["busy"]["vms"], key=lambda v: (-v["busy"], v["vm"]))[:40]
    return render(
        request,
        "stats.html",
        data=data,
        hours=hours,
        windows=WINDOWS + (744,),
        vm_bars=charts.bars([(v["vm"], v["busy"], f"/vms/{v['vm']}") for v in vms]),
        host_bars=charts.bars([(h["host"], h["busy"], f"/hosts/{h['host']}") for h in data["busy"]["hosts"]]),
        errors=charts.heat(data["infra_errors"]["buckets"], data["infra_errors"]["vms"]),
    )
