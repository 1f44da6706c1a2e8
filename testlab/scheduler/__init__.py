"""The scheduler: a pure function from a snapshot of the lab to the actions of one round, and its
round-after-round form that plans again only what changed (`plan_round`)."""

from testlab.scheduler.classify import SnapshotError
from testlab.scheduler.heads import queue_heads
from testlab.scheduler.plan import plan
from testlab.scheduler.rounds import Carried, plan_round
from testlab.scheduler.snapshot import (
    Action,
    HostLimits,
    HostView,
    Plan,
    PowerOff,
    Revert,
    Snapshot,
    StartTask,
    TaskView,
    VMView,
)

__all__ = [
    "Action",
    "Carried",
    "HostLimits",
    "HostView",
    "Plan",
    "PowerOff",
    "Revert",
    "Snapshot",
    "SnapshotError",
    "StartTask",
    "TaskView",
    "VMView",
    "plan",
    "plan_round",
    "queue_heads",
]
