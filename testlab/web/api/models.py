"""The API's shapes, for the OpenAPI description. The data itself comes from testlab.services.views
(the same dictionaries `--json` prints); these models only describe them, and let later keys through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(Shape):
    message: str


class Problem(Shape):
    detail: str


class Submitted(Shape):
    id: int
    url: str


class JobBase(Shape):
    id: int
    name: str
    owner: str
    priority: int
    status: str
    submitted: str | None
    started: str | None
    ended: str | None


class JobSummary(JobBase):
    tasks: dict[str, int]  # task status -> count


class JobPage(Shape):
    jobs: list[JobSummary]
    next: int | None  # pass as `before` for the next page; null on the last page


class UseView(Shape):
    """One use of a VM since its last wipe (docs/lifecycle.md)."""

    id: int
    kind: Literal["task", "prepare", "exec", "power-cycle"]
    job: int | None
    step: str | None
    task: int | None
    actor: str | None
    started: str | None
    ended: str | None
    outcome: str | None
    concurrent: bool


class TaskView(Shape):
    id: int
    number: int
    vm: str | None
    status: str
    tries: int
    exit_code: int | None
    failures: int | None
    detail: str
    blocked: str | None
    started: str | None
    ended: str | None
    history: str | None  # the VM's uses since its last wipe, as a history string
    used_before: list[UseView] | None  # a failure on a reused VM: the earlier uses, newest first


class StepView(Shape):
    number: int
    name: str
    after: str | None
    status: str
    command: str
    timeout: float
    prepare: bool
    clean: bool
    started: str | None
    ended: str | None
    tasks: list[TaskView]


class JobView(JobBase):
    cancel_requested: bool
    steps: list[StepView]


class VMView(Shape):
    name: str
    host: str
    domain: str
    snapshot: str
    role: str
    labels: list[str]
    status: str
    maintenance_requested: bool
    errors: int
    operation: str | None
    operation_deadline: str | None
    description: str
    wipe: Literal["every-task", "reuse"]
    uses_since_wipe: int
    wipe_requested: bool


class VMPage(Shape):
    vms: list[VMView]
    next: str | None  # pass as `after` for the next page


class HostView(Shape):
    name: str
    backend: str
    uri: str
    status: str
    vms: int
    limits: dict[str, Any]


class HostPage(Shape):
    hosts: list[HostView]
    next: str | None


class EventView(Shape):
    id: int
    time: str
    kind: str
    vm: str | None
    host: str | None
    job: int | None
    task: int | None
    old: str | None
    new: str | None
    reason: str
    actor: str | None


class EventPage(Shape):
    events: list[EventView]
    next: int | None  # pass as `before` for the next page


class Artifact(Shape):
    path: str
    size: int


class ArtifactList(Shape):
    task: int
    artifacts: list[Artifact]


class VMChange(BaseModel):
    """What an administrator changes on a VM (as `testlab vm set`)."""

    change: Literal["maintenance", "no-maintenance", "offline", "enable"]
    abort: bool = False  # with maintenance: abort the running task (it is requeued)


class HostChange(BaseModel):
    status: Literal["up", "down"]


class PowerCycle(BaseModel):
    timeout: float = 600.0


class WhoAmI(Shape):
    name: str | None
    role: str | None
    via: str


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in (
        (400, "The request cannot be carried out as asked"),
        (401, "Not logged in, or the API token is invalid, expired or revoked"),
        (403, "Not allowed for this user, or a missing CSRF token"),
        (404, "No such job, task, VM, host or file"),
        (409, "The lab kept changing under the change"),
        (422, "Bad parameters, or a bad job file (FILE:LINE: FIELD: message)"),
    )
}
