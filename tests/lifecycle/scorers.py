"""The statistics blame's choice was compared with, each a `Scorer`: (failures after, successes
after, the lab's failure rate) -> score, higher is more suspect."""

from __future__ import annotations

import math
from functools import partial

from testlab.lifecycle.blame import posterior_mean

Z95 = 1.959964


def failure_count(failures: int, successes: int, base_rate: float) -> float:
    """How many failures followed: what a plain "top offenders" list shows."""
    return float(failures)


def failure_rate(failures: int, successes: int, base_rate: float) -> float:
    return failures / (failures + successes)


def wilson_lower_bound(failures: int, successes: int, base_rate: float) -> float:
    """The lower bound of the 95 % Wilson score interval of the failure-after rate."""
    total = failures + successes
    rate = failures / total
    z2 = Z95 * Z95
    centre = rate + z2 / (2 * total)
    spread = Z95 * math.sqrt(rate * (1 - rate) / total + z2 / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z2 / total))


def binomial_surprise(failures: int, successes: int, base_rate: float) -> float:
    """-log10 of the chance of at least this many failures among the followers if each failed at the
    lab's rate (a one-sided binomial test): the strength of the evidence against innocence."""
    total = failures + successes
    if base_rate <= 0.0:
        return math.inf if failures else 0.0
    if base_rate >= 1.0:
        return 0.0
    terms = [
        math.lgamma(total + 1)
        - math.lgamma(k + 1)
        - math.lgamma(total - k + 1)
        + k * math.log(base_rate)
        + (total - k) * math.log1p(-base_rate)
        for k in range(failures, total + 1)
    ]
    top = max(terms)
    log_tail = top + math.log(sum(math.exp(term - top) for term in terms))
    return -log_tail / math.log(10)


STATISTICS = {
    "failure count": failure_count,
    "failure rate": failure_rate,
    "Wilson lower bound": wilson_lower_bound,
    "binomial surprise": binomial_surprise,
    "posterior mean, m=4": partial(posterior_mean, prior_weight=4),
    "posterior mean, m=10 (chosen)": posterior_mean,
    "posterior mean, m=25": partial(posterior_mean, prior_weight=25),
}
