"""Blame: who counts as a follower of whom, the score, and the order of the ranking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testlab.lifecycle.blame import PRIOR_WEIGHT, Suspect, blame, count_followers, posterior_mean
from testlab.lifecycle.model import Lifecycle, Use, UseKind
from tests.lifecycle.strategies import lifecycles


def t(job: int, step: str, outcome: str | None = "completed", kind: str = UseKind.TASK) -> Use:
    return Use(kind, job=job, step=step, outcome=outcome)


def ok(job: int, step: str) -> Use:
    return t(job, step, "completed")


def ko(job: int, step: str) -> Use:
    return t(job, step, "failed")


def counts(*lifecycles: list[Use]) -> dict[str | None, tuple[int, int]]:
    """(failures after, successes after) per suspect (out-of-job kinds by their kind)."""
    result = count_followers(Lifecycle("vm", tuple(uses)) for uses in lifecycles)
    return {step or kind: (tally.failures, tally.successes) for (kind, step), tally in result.tallies.items()}


def test_tasks_of_other_jobs_that_followed_before_the_wipe():
    uses = [ok(1, "build"), ok(1, "scrub"), ok(2, "build"), ko(2, "test"), ko(3, "test")]
    assert counts(uses) == {
        "build": (2, 1),  # 2's build and test and 3's test followed 1's build
        "scrub": (2, 1),
        "test": (1, 0),  # 3's test followed 2's
    }


def test_a_jobs_own_failures_do_not_count_against_its_steps():
    assert counts([ok(1, "scrub"), ko(1, "test"), ko(1, "test")]) == {"scrub": (0, 0), "test": (0, 0)}


def test_a_wipe_ends_what_an_earlier_use_is_followed_by():
    assert counts([ok(1, "scrub")], [ko(2, "test")]) == {"scrub": (0, 0), "test": (0, 0)}


def test_a_follower_counts_once_per_step_name():
    assert counts([ok(1, "build"), ok(2, "build"), ko(3, "test")])["build"] == (1, 1)
    # 2's test followed 1's build, though not its own job's build.
    assert counts([ok(1, "build"), ok(2, "build"), ko(2, "test")])["build"] == (1, 1)


def test_only_tasks_with_a_verdict_are_followers():
    uses = [ok(1, "scrub"), t(2, "a", None), t(3, "a", "canceled"), t(4, "a", "skipped")]
    uses += [t(5, "a", "timeout"), t(6, "a", "boterror"), t(7, "a", "completed")]
    assert counts(uses)["scrub"] == (2, 1)


def test_preparation_uses_and_uses_outside_any_job_are_suspects_too():
    uses = [
        t(1, "setup", kind=UseKind.PREPARE),
        Use(UseKind.EXEC, use_id=1, actor="cli alice"),
        ko(2, "test"),
        Use(UseKind.POWER_CYCLE, use_id=2),
        ok(3, "test"),
    ]
    assert counts(uses) == {"setup": (1, 1), "exec": (1, 1), "test": (0, 1), "power-cycle": (0, 1)}
    ranking = blame([Lifecycle("vm", tuple(uses))])
    assert [(s.kind, s.step, s.job) for s in ranking] == [
        ("step", "setup", 1),
        ("exec", None, None),
        ("step", "test", 3),  # a tie: steps before out-of-job kinds
        ("power-cycle", None, None),
    ]


def test_the_ranking_names_the_latest_job_of_a_step_and_leaves_out_suspects_without_followers():
    lifecycles = [
        Lifecycle("vm1", (ok(7, "scrub"), ko(8, "test"), ko(9, "test"))),
        Lifecycle("vm2", (ok(12, "scrub"), ko(10, "test"))),
        Lifecycle("vm3", (ok(11, "lonely"),)),
    ]
    ranking = blame(lifecycles)
    assert [(s.step, s.job, s.failures_after, s.successes_after) for s in ranking] == [
        ("scrub", 12, 3, 0),
        ("test", 10, 1, 0),
    ]
    assert ranking[0].as_dict() == {
        "kind": "step",
        "step": "scrub",
        "job": 12,
        "failures_after": 3,
        "successes_after": 0,
        "score": round((3 + PRIOR_WEIGHT * 3 / 6) / (3 + PRIOR_WEIGHT), 6),  # 3 of the 6 tasks failed
    }


def test_ties_are_broken_by_evidence_then_name():
    def score(failures, successes, base_rate):
        return 0.5

    uses = [ok(1, "b"), ok(1, "a"), ok(1, "c"), ko(2, "x"), ok(3, "y")]
    uses2 = [ok(4, "c"), ko(5, "x")]
    ranking = blame([Lifecycle("v", tuple(uses)), Lifecycle("w", tuple(uses2))], score=score)
    assert [s.step for s in ranking] == ["c", "a", "b", "x"]


def test_the_posterior_mean():
    assert posterior_mean(0, 0, 0.2) == pytest.approx(0.2)  # no evidence: the lab's rate
    assert posterior_mean(1, 0, 0.0) == pytest.approx(1 / 11)
    assert posterior_mean(10, 0, 0.0) == pytest.approx(0.5)  # as many followers as the prior is worth
    for bad in [(-1, 0, 0.1), (0, -1, 0.1), (0, 0, 1.5), (0, 0, -0.1)]:
        with pytest.raises(ValueError):
            posterior_mean(*bad)
    with pytest.raises(ValueError, match="prior weight"):
        posterior_mean(1, 1, 0.1, prior_weight=0)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0, 1))
def test_the_score_is_a_rate_that_frequency_alone_does_not_raise(failures, successes, base_rate):
    score = posterior_mean(failures, successes, base_rate)
    assert 0.0 <= score <= 1.0
    assert posterior_mean(failures + 1, successes, base_rate) >= score
    assert posterior_mean(failures, successes + 1, base_rate) <= score
    # Followers failing at the lab's own rate leave the score at that rate, however many there are.
    total = failures + successes
    assert posterior_mean(base_rate * total, (1 - base_rate) * total, base_rate) == pytest.approx(base_rate)
    # More followers at the same rate move the score towards that rate, never beyond it.
    if total:
        rate = failures / total
        bigger = posterior_mean(10 * failures, 10 * successes, base_rate)
        assert min(rate, score) - 1e-9 <= bigger <= max(rate, score) + 1e-9


def reference_counts(lifecycles: list[Lifecycle]) -> dict[tuple[str, str | None], tuple[int, int]]:
    """The definition, followed literally: for each suspect, the set of later tasks with a verdict,
    in the same lifecycle, of a job other than that of some earlier use of the suspect."""
    result: dict[tuple[str, str | None], tuple[int, int]] = {}
    for lifecycle in lifecycles:
        uses = lifecycle.uses
        for key in {("step", u.step) if u.in_job else (u.kind, None) for u in uses}:
            followers = set()
            for i, earlier in enumerate(uses):
                if (("step", earlier.step) if earlier.in_job else (earlier.kind, None)) != key:
                    continue
                for j in range(i + 1, len(uses)):
                    later = uses[j]
                    if later.in_job and (later.failed or later.succeeded) and later.job != earlier.job:
                        followers.add(j)
            failures = sum(uses[j].failed for j in followers)
            old = result.get(key, (0, 0))
            result[key] = (old[0] + failures, old[1] + len(followers) - failures)
    return result


@given(st.lists(lifecycles(), max_size=6))
@settings(deadline=None)  # the reference is cubic; a loaded machine must not fail it
def test_counts_follow_the_definition(lifecycles):
    counted = count_followers(lifecycles)
    assert {key: (t.failures, t.successes) for key, t in counted.tallies.items()} == reference_counts(
        lifecycles
    )
    verdicts = [u for lc in lifecycles for u in lc.uses if u.failed or u.succeeded]
    assert counted.failures + counted.successes == len(verdicts)
    ranking = blame(lifecycles)
    assert all(isinstance(s, Suspect) and s.failures_after + s.successes_after > 0 for s in ranking)
    assert [s.score for s in ranking] == sorted((s.score for s in ranking), reverse=True)
