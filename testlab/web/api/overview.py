"""/api/v1/whoami, /api/v1/stats and /api/v1/activity: who is asking, and how the lab has been doing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from testlab.services.stats import activity, statistics
from testlab.web.api.models import PROBLEMS, WhoAmI
from testlab.web.auth import Requester, reader, requester
from testlab.web.context import web

router = APIRouter(prefix="/api/v1", tags=["overview"], responses=PROBLEMS)

Hours = Query(24.0, ge=0.01, le=24 * 31, description="The window: this many hours up to now")


@router.get("/whoami", response_model=WhoAmI, summary="The user the request is made as")
def whoami(who: Requester = Depends(requester)) -> dict:
    return {
        "name": who.identity.name if who.identity else None,
        "role": who.identity.role if who.identity else None,
        "via": who.via,
    }


@router.get("/stats", summary="Queue wait, task duration, revert time, busy share, infrastructure errors")
def stats(request: Request, hours: float = Hours, who: Requester = Depends(reader)) -> dict:
    return web(request).read(lambda s: statistics(s, hours=hours))


@router.get("/activity", summary="Each VM's status over time, with engine starts and host operations")
def timeline(
    request: Request,
    hours: float = Query(6.0, ge=0.01, le=24 * 7),
    host: list[str] | None = Query(None, description="Only these hosts"),
    who: Requester = Depends(reader),
) -> dict:
    return web(request).read(lambda s: activity(s, hours=hours, hosts=host))
