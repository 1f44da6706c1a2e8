"""Why blame scores with the posterior mean: its comparison with other statistics on synthetic
workloads (the table docs/lifecycle.md shows) and the two ways the others go wrong."""

from __future__ import annotations

from pathlib import Path

from testlab.lifecycle.blame import blame, posterior_mean
from tests.lifecycle.compare import compare, table
from tests.lifecycle.scorers import binomial_surprise, failure_count, failure_rate, wilson_lower_bound
from tests.lifecycle.workloads import DAMAGING, Workload

DOCS = Path(__file__).parents[2] / "docs" / "lifecycle.md"

EXPECTED = """\
| statistic | (1) | (2) | (3) | (4) | (5) |
|---|---|---|---|---|---|
| failure count | 0/20 | 0/18 (2) | 0/20 | 0/18 | 0/10 (1) |
| failure rate | 0/20 (20) | 0/18 (18) | 0/20 (20) | 0/18 (18) | 0/10 (10) |
| Wilson lower bound | 12/20 (8) | 4/18 (14) | 20/20 | 15/18 (3) | 7/10 (3) |
| binomial surprise | 20/20 | 15/18 (2) | 20/20 | 18/18 | 5/10 (1) |
| posterior mean, m=4 | 19/20 (1) | 12/18 (6) | 20/20 | 14/18 (4) | 8/10 (2) |
| posterior mean, m=10 (chosen) | 20/20 | 16/18 (2) | 20/20 | 18/18 | 9/10 (1) |
| posterior mean, m=25 | 20/20 | 16/18 (2) | 20/20 | 18/18 | 9/10 (1) |

(1) 50 jobs, 4 VMs wiped every 3-6 jobs
(2) 60 jobs, 6 VMs wiped every 2-3 jobs, 2 rare steps
(3) 200 jobs, 30 % of tasks fail anyway
(4) 100 jobs, 2 VMs wiped every 10-30 jobs
(5) 2,000 jobs, damaging step in 0.2 %, lint breaks the VM 10 % of the time"""


def test_the_comparison_docs_show():
    """Each cell: in how many workloads the statistic ranked the damaging step first, of those in
    which it had any follower, and (in brackets) in how many it put a rare innocent step above it."""
    assert table(compare()) == EXPECTED
    assert EXPECTED in DOCS.read_text(encoding="utf-8")


def test_counting_failures_favours_frequent_steps_and_rates_favour_rare_ones():
    lifecycles = Workload(jobs=50, seed=1).lifecycles()
    assert blame(lifecycles, score=failure_count)[0].step in {"build", "test"}  # they precede everything
    assert blame(lifecycles, score=failure_rate)[0].step == "rare0"  # followed by one failure, once
    assert blame(lifecycles)[0].step == DAMAGING


def test_the_lower_bound_lets_a_coincidence_outrank_a_damaging_step():
    # A damaging step whose followers include the steps it does not harm (builds) against a step
    # that ran once, right before a failure.
    damaging, rare, base = (7, 15), (1, 0), 0.05
    assert wilson_lower_bound(*rare, base) > wilson_lower_bound(*damaging, base)
    assert posterior_mean(*damaging, base) > posterior_mean(*rare, base)


def test_the_tail_probability_grows_with_frequency_alone():
    # A frequent step a little above the lab's rate (it runs next to the damage often) against a rare
    # step that damages every time: the evidence against the frequent one keeps growing with its
    # followers, though what it does per use stays small.
    frequent, damaging, base = (150, 850), (6, 4), 0.1
    assert binomial_surprise(*frequent, base) > binomial_surprise(*damaging, base)
    assert posterior_mean(*damaging, base) > posterior_mean(*frequent, base)
    assert binomial_surprise(1500, 8500, base) > 8 * binomial_surprise(*frequent, base)  # 55 against 6.3
    assert posterior_mean(1500, 8500, base) < posterior_mean(*frequent, base) + 0.01
