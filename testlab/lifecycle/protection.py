"""Automatic protection: wipe a reused VM once its recent failures point at an earlier use.

The rule: when the latest K (default 2) tasks with a verdict on a VM since its last wipe all failed,
they belong to at least K different jobs, and one earlier use (of yet another job, or outside any
job) preceded all of them, that use is suspected of having left the machine broken. The VM should
be wiped before its next use, so that the next job does not fail too, and people told which use is
suspected. One job failing twice is not enough: that is more likely the job's own fault.

Everything here is a pure decision on the VM's current lifecycle; acting on it (the wipe, the
notification) is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from testlab.lifecycle.blame import Suspect, SuspectKind
from testlab.lifecycle.model import Use

DEFAULT_K: Final = 2


@dataclass(frozen=True, slots=True)
class WipeAdvice:
    """Why the VM should be wiped: `suspects` (the earlier uses that failing tasks of at least K
    other jobs followed, most suspect first) and `failures` (those failing tasks for `suspect`, in
    order)."""

    suspects: tuple[Use, ...]
    failures: tuple[Use, ...]

    @property
    def suspect(self) -> Use:
        return self.suspects[0]

    @property
    def reason(self) -> str:
        """One line for the notification and the VM's event."""
        use = self.suspect
        what = f"step {use.step} of job {use.job}" if use.in_job else f"{use.kind}#{use.use_id}"
        jobs = list(dict.fromkeys(task.job for task in self.failures))
        listed = ", ".join(str(job) for job in jobs)
        return f"tasks of {len(jobs)} jobs ({listed}) failed in a row after {what}"


def wipe_advice(
    uses: Sequence[Use], *, k: int = DEFAULT_K, ranking: Sequence[Suspect] = ()
) -> WipeAdvice | None:
    """Whether the rule fires on a VM's current lifecycle (`uses`, in order, outcomes as known now).

    Returns None when it does not. When several earlier uses preceded the failures, the one ranked
    highest in `ranking` (a `blame` result) comes first; without a ranking, or among uses it does not
    rank, the most recent comes first, being the nearest to the failures.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    run = _failing_run(uses)
    if len({uses[i].job for i in run}) < k:
        return None
    candidates: list[tuple[int, tuple[Use, ...]]] = []
    for index in range(run[-1]):
        use = uses[index]
        after = tuple(uses[i] for i in run if i > index and uses[i].job != use.job)
        # A use inside the run (a failing task, an administrator's command) may itself be the
        # culprit of the failures that came after it.
        if len({task.job for task in after}) >= k:
            candidates.append((index, after))
    if not candidates:
        return None
    rank = {(s.kind, s.step): position for position, s in enumerate(ranking)}

    def order(candidate: tuple[int, tuple[Use, ...]]) -> tuple[int, int]:
        index, _ = candidate
        use = uses[index]
        key = (SuspectKind.STEP, use.step) if use.in_job else (use.kind, None)
        return (rank.get(key, len(rank)), -index)

    candidates.sort(key=order)
    return WipeAdvice(suspects=tuple(uses[i] for i, _ in candidates), failures=candidates[0][1])


def _failing_run(uses: Sequence[Use]) -> list[int]:
    """Indexes of the latest tasks with a verdict, in order, as long as they all failed."""
    run: list[int] = []
    for index in range(len(uses) - 1, -1, -1):
        use = uses[index]
        if use.succeeded:
            break
        if use.failed:
            run.append(index)
    run.reverse()
    return run
