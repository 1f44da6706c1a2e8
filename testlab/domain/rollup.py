"""The one roll-up of child statuses into a parent status (task -> step -> job).

Pure functions only: the engine and the CLI both call these, so a step or job can never be
shown in a status the rules below would not give it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from testlab.domain.statuses import TaskStatus

# Most significant first; used once no child is queued.
PRECEDENCE: tuple[str, ...] = (
    TaskStatus.RUNNING,
    TaskStatus.BOTERROR,
    TaskStatus.FAILED,
    TaskStatus.TIMEOUT,
    TaskStatus.CANCELED,
    TaskStatus.SKIPPED,
    TaskStatus.COMPLETED,
)
_RANK = {status: rank for rank, status in enumerate(PRECEDENCE)}


def rollup(children: Iterable[str], *, cancel_requested: bool = False) -> str:
    """Return the parent status for the given child statuses.

    - only queued children -> queued;
    - some queued and some started or finished -> running;
    - no queued child -> the most significant child status (see PRECEDENCE);
    - when the parent was canceled, skipped children count as canceled, so a job canceled
      before any task ran reads `canceled`, not `skipped`.
    A parent without children has nothing left to do and is `completed`.
    """
    seen = set(children)
    if not seen:
        return TaskStatus.COMPLETED
    unknown = seen - TaskStatus.ALL
    if unknown:
        raise ValueError(f"unknown status {sorted(unknown)[0]!r}")
    if TaskStatus.QUEUED in seen:
        return TaskStatus.QUEUED if len(seen) == 1 else TaskStatus.RUNNING
    if cancel_requested and TaskStatus.SKIPPED in seen:
        seen.discard(TaskStatus.SKIPPED)
        seen.add(TaskStatus.CANCELED)
    return min(seen, key=_RANK.__getitem__)


def is_final(status: str) -> bool:
    return status in TaskStatus.FINAL


def timestamps(
    new_status: str,
    *,
    started: datetime | None,
    ended: datetime | None,
    now: datetime,
) -> tuple[datetime | None, datetime | None]:
    """Return (started, ended) for a parent entering `new_status`.

    `started` is set the first time the parent leaves `queued` and cleared if it regresses to
    `queued` (its tasks were requeued: nothing of it runs any more). `ended` is set once, when the
    parent first reaches a final status, and cleared if it leaves the final statuses again.
    """
    if new_status == TaskStatus.QUEUED:
        return None, None
    if started is None:
        started = now
    if is_final(new_status):
        return started, ended if ended is not None else now
    return started, None
