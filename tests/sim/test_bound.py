"""The lower bound on the makespan: right on hand-computed cases, and never beaten by a policy."""

from __future__ import annotations

import pytest

from testlab.sim.bound import lower_bound
from testlab.sim.jobs import generate_jobs
from testlab.sim.policies import POLICIES
from testlab.sim.simulator import simulate
from tests.sim import EXAMPLES, host_lab, lab, workload

ONE_AT_0 = "  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 60s}}\n"
ONE = "name: one\nsteps:\n  - {name: run, vms: [v1, v2, v3], run: x}\n"


def bound_of(lab_def, load):
    return lower_bound(generate_jobs(load, lab_def), lab_def, load)


def test_a_host_that_never_reverts_while_running_does_both_in_turn(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 30s\ntemplates:\n" + ONE_AT_0,
        {"one.yaml": ONE},
    )
    serial = host_lab({"h1": ["v1", "v2", "v3"]}, "max_active: 3, max_reverting: 3, max_running: 3")
    bound = bound_of(serial, load)
    # Three runs on three slots (60s), then three reverts on three slots (30s), one after the other.
    assert (bound.value, bound.critical, bound.capacity, bound.bottleneck) == (90.0, 60.0, 90.0, "host h1")
    overlapping = host_lab(
        {"h1": ["v1", "v2", "v3"]},
        "max_active: 6, max_reverting: 1, max_running: 3, max_reverts_while_running: 1",
    )
    assert bound_of(overlapping, load).value == 90.0  # three reverts of 30s, one at a time
    one_slot = host_lab(
        {"h1": ["v1", "v2", "v3"]}, "max_active: 1, max_running: 1, max_reverts_while_running: 1"
    )
    assert bound_of(one_slot, load).value == 270.0  # one VM on at a time: revert and run, three times


def test_vms_of_one_domain_take_turns(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 30s\ntemplates:\n" + ONE_AT_0,
        {"one.yaml": ONE},
    )
    shared = host_lab(
        {"h1": ["v1", "v2", "v3"]},
        "max_active: 9, max_reverting: 9, max_running: 9, max_reverts_while_running: 9",
        shared={"v2": "v1", "v3": "v1"},
    )
    bound = bound_of(shared, load)
    assert (bound.value, bound.bottleneck) == (270.0, "domain h1/v1")


def test_the_critical_path_counts_run_times_of_the_steps_that_run(tmp_path):
    job = """name: bt
steps:
  - {name: build, vms: [v1], run: make}
  - {name: test, after: build, vms: [v2], run: make test}
"""
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 1s\ntemplates:\n"
        "  - {job: bt.yaml, arrivals: {at: [0s]}, steps: {build: 100s, test: 50s}}\n"
        "  - {job: bad.yaml, arrivals: {at: [0.5s]}, steps: {build: {mean: 100s, fail: 1}, test: 500s}}\n",
        {"bt.yaml": job, "bad.yaml": job.replace("name: bt", "name: bad")},
    )
    roomy = "max_active: 9, max_reverting: 9, max_running: 9, max_reverts_while_running: 9"
    bound = bound_of(host_lab({"h1": ["v1", "v2"]}, roomy), load)
    assert bound.critical == 150.0  # the failed build's test never runs
    assert bound.capacity == 202.0  # v1's domain: two builds and their reverts


@pytest.mark.parametrize("policy", list(POLICIES))
def test_no_policy_beats_the_bound(tmp_path, policy):
    """With constant durations the bound is exact arithmetic, so no run may end before it."""
    (tmp_path / "jobs").symlink_to(EXAMPLES / "wtb-jobs")
    load = workload(
        tmp_path,
        """duration: 12h
revert: 90s
templates:
  - job: jobs/patch.yaml
    arrivals: {rate: 4/h}
    steps: {build: 10m, test: 6m}
  - job: jobs/winetest.yaml
    arrivals: {every: 6h}
    steps: {test: 20m}
""",
        {},
    )
    wtb = lab((EXAMPLES / "wtb-lab.yaml").read_text())
    result = simulate(wtb, load, POLICIES[policy])
    bound = lower_bound(result.jobs, wtb, load)
    makespan = max(job.ended for job in result.jobs)
    assert bound.value <= makespan <= 1.5 * bound.value
