"""Blame: which steps most often leave a reused machine in a state the next jobs fail in.

For every earlier use of a step name in a lifecycle, the tasks of *other* jobs that began after it
on the same machine before the next wipe are its followers; each follower is counted once per step
name, as a failure (failed, timeout, boterror) or a success (completed). Tasks that did not run to a
verdict (canceled, skipped, still running) are not counted. A task failing after an earlier step of
its own job is that job's own business, not damage left for others, so it is not counted either.
Uses outside any job are suspects too, one per kind (`exec`, `power-cycle`).

The score is the posterior mean of a suspect's failure-after rate under a Beta prior centred on the
lab's failure rate (over every task with a verdict) and worth `PRIOR_WEIGHT` followers: a suspect
with no evidence scores the lab's usual rate, and its own rate takes over as followers accumulate.
Frequency alone does not raise it (a step followed by 1,000 tasks failing at the lab's usual rate
scores that rate, however often it runs), and a step seen once, followed by one failure, stays near
the usual rate. docs/lifecycle.md compares it with other statistics on synthetic workloads and says
why it was chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from testlab.lifecycle.model import Lifecycle, Use, UseKind

# How many followers' worth of evidence the prior is: a suspect's own rate outweighs the lab's once
# more than this many tasks followed it.
PRIOR_WEIGHT: Final = 10.0

# How a suspect is scored from its followers: (failures after, successes after, the lab's failure
# rate over all tasks with a verdict) -> score, higher is more suspect.
Scorer = Callable[[int, int, float], float]


class SuspectKind:
    """What a suspect is: a step name, or one of the kinds of use outside any job."""

    STEP: Final = "step"
    EXEC: Final = UseKind.EXEC
    POWER_CYCLE: Final = UseKind.POWER_CYCLE


@dataclass(frozen=True, slots=True)
class Suspect:
    """One line of the blame ranking.

    `step` is the step name (None for an out-of-job kind); `job` the latest (highest) job id that
    ran a step of that name, as the one to look at first (None for out-of-job kinds).
    """

    kind: str
    step: str | None
    job: int | None
    failures_after: int
    successes_after: int
    score: float

    def as_dict(self) -> dict[str, object]:
        """The JSON form: `kind`, `step`, `job`, `failures_after`, `successes_after`, `score`."""
        return {
            "kind": self.kind,
            "step": self.step,
            "job": self.job,
            "failures_after": self.failures_after,
            "successes_after": self.successes_after,
            "score": round(self.score, 6),
        }


def posterior_mean(
    failures: int, successes: int, base_rate: float, *, prior_weight: float = PRIOR_WEIGHT
) -> float:
    """The expected failure-after rate given the followers seen, starting from the lab's rate.

    Beta(prior_weight * base_rate, prior_weight * (1 - base_rate)) updated with the counts: the
    mean is (failures + prior_weight * base_rate) / (failures + successes + prior_weight).
    """
    if failures < 0 or successes < 0:
        raise ValueError(f"counts cannot be negative, got {failures} and {successes}")
    if not 0.0 <= base_rate <= 1.0:
        raise ValueError(f"a base rate is from 0 to 1, got {base_rate}")
    if prior_weight <= 0:
        raise ValueError(f"the prior weight must be positive, got {prior_weight}")
    return (failures + prior_weight * base_rate) / (failures + successes + prior_weight)


@dataclass
class Tally:
    """One suspect's followers: failures and successes, and the latest job that used it."""

    failures: int = 0
    successes: int = 0
    latest_job: int | None = None


@dataclass
class FollowerCounts:
    """The counts blame scores: per suspect key ((kind, step)), and all tasks with a verdict."""

    tallies: dict[tuple[str, str | None], Tally] = field(default_factory=dict)
    failures: int = 0
    successes: int = 0

    @property
    def base_rate(self) -> float:
        """The lab's failure rate over every task with a verdict (0 when there is none)."""
        total = self.failures + self.successes
        return self.failures / total if total else 0.0


def count_followers(lifecycles: Iterable[Lifecycle]) -> FollowerCounts:
    """Count, for each suspect, the failing and succeeding tasks of other jobs that followed one of
    its uses on the same machine before the next wipe (each follower once per suspect)."""
    counts = FollowerCounts()
    for lifecycle in lifecycles:
        # The jobs that used each suspect so far in this lifecycle (None for out-of-job uses).
        users: dict[tuple[str, str | None], set[int | None]] = {}
        for use in lifecycle.uses:
            verdict = _verdict(use)
            if verdict is not None:
                if verdict:
                    counts.failures += 1
                else:
                    counts.successes += 1
                for key, jobs in users.items():
                    if len(jobs) > 1 or use.job not in jobs:
                        tally = counts.tallies[key]
                        if verdict:
                            tally.failures += 1
                        else:
                            tally.successes += 1
            key = _key(use)
            users.setdefault(key, set()).add(use.job)
            tally = counts.tallies.setdefault(key, Tally())
            if use.job is not None and (tally.latest_job is None or use.job > tally.latest_job):
                tally.latest_job = use.job
    return counts


def blame(lifecycles: Iterable[Lifecycle], *, score: Scorer = posterior_mean) -> list[Suspect]:
    """Every suspect that had at least one follower, most suspect first.

    Ties are broken by more failures after, then fewer successes after, then name, so the order is
    stable. `score` is replaceable to compare statistics; the default is the documented one.
    """
    counts = count_followers(lifecycles)
    base_rate = counts.base_rate
    suspects = [
        Suspect(
            kind=kind,
            step=step,
            job=tally.latest_job,
            failures_after=tally.failures,
            successes_after=tally.successes,
            score=score(tally.failures, tally.successes, base_rate),
        )
        for (kind, step), tally in counts.tallies.items()
        if tally.failures + tally.successes
    ]
    suspects.sort(key=_rank_key)
    return suspects


def _rank_key(suspect: Suspect) -> tuple[float, int, int, bool, str]:
    return (
        -suspect.score,
        -suspect.failures_after,
        suspect.successes_after,
        suspect.kind != SuspectKind.STEP,
        suspect.step or suspect.kind,
    )


def _key(use: Use) -> tuple[str, str | None]:
    return (SuspectKind.STEP, use.step) if use.in_job else (use.kind, None)


def _verdict(use: Use) -> bool | None:
    """True for a task that failed, False for one that succeeded, None for anything else."""
    if not use.in_job:
        return None
    if use.failed:
        return True
    if use.succeeded:
        return False
    return None
