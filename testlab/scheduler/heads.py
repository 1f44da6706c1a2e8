"""The head of the queue: the only queued tasks a planning round can act on.

A round looks, for each VM a task is pinned to, at its first runnable (stage 0) task, and at its
first next-step (stage 1) task only while the VM has no runnable task ahead of it: a VM with
runnable work is not prepared for a later step, and it is already claimed against pool tasks by
its first task. Every later task of that VM waits behind them. A pool shares one candidate tuple
among its tasks, and each of its tasks claims a different candidate or nothing: once a task of one
stage claims nothing, no later task of that stage can (claims only grow during a round). So at most
one task per distinct candidate of each stage can matter. Dropping the rest leaves the plan exactly
the same, and spares the round (and the engine's read) the whole depth of a long queue.
"""

from __future__ import annotations

from collections.abc import Iterable

from testlab.scheduler.snapshot import TaskView


def pool_depth(candidates: tuple[str, ...]) -> int:
    """How many tasks of one stage of a pool can claim a VM in a round. At least one, so a queue
    holding only tasks of pools without candidates still shows as not empty."""
    return max(1, len(set(candidates)))


def queue_heads(tasks: Iterable[TaskView]) -> tuple[TaskView, ...]:
    """The tasks, in queue order, that plan() can act on; plan() on them equals plan() on all.

    Tasks with a stage other than 0 or 1 are kept: plan() rejects them whatever comes before."""
    kept: list[TaskView] = []
    runnable: set[str] = set()  # VMs whose first runnable task is kept
    waiting: set[str] = set()  # VMs whose first next-step task is kept
    pool_room: dict[tuple[int, int], int] = {}
    for task in tasks:
        stage = task.stage
        if stage != 0 and stage != 1:
            kept.append(task)
            continue
        vm = task.vm
        if vm is not None:
            if vm not in runnable and (stage == 0 or vm not in waiting):
                (runnable if stage == 0 else waiting).add(vm)
                kept.append(task)
            continue
        pool = (id(task.candidates), stage)
        room = pool_room.get(pool)
        if room is None:
            room = pool_depth(task.candidates)
        if room:
            pool_room[pool] = room - 1
            kept.append(task)
    return tuple(kept)
