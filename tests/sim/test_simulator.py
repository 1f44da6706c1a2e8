"""The simulation: deterministic, faithful to the engine's rules, and exact when it plans per host."""

from __future__ import annotations

import dataclasses

import pytest

from testlab.domain.labfile import parse_lab
from testlab.scheduler import Plan, Snapshot
from testlab.sim.bound import lower_bound
from testlab.sim.metrics import summarize
from testlab.sim.policies import POLICIES
from testlab.sim.simulator import Simulation, simulate
from testlab.sim.workload import parse_workload
from tests.sim import EXAMPLES, host_lab, workload
from tests.unit.scheduler import check_plan

WTB_LAB = parse_lab(EXAMPLES / "wtb-lab.yaml")
WTB = parse_workload(EXAMPLES / "wtb-workload.yaml").with_duration(12 * 3600)


def summary(lab, load, policy="testlab", **kwargs):
    result = Simulation(lab, load, POLICIES[policy], **kwargs).run()
    data = summarize(result, lower_bound(result.jobs, lab, load), lab)
    data.pop("wall_seconds")
    return data


def checked(policy):
    """The policy, with every plan it makes checked against the scheduler's guarantees."""

    def plan(snapshot: Snapshot) -> Plan:
        decided = policy.plan(snapshot)
        check_plan(snapshot, decided)
        return decided

    return dataclasses.replace(policy, plan=plan)


def test_same_seed_same_result_other_seed_other_result():
    assert summary(WTB_LAB, WTB) == summary(WTB_LAB, WTB)
    assert summary(WTB_LAB, WTB) != summary(WTB_LAB, WTB.with_seed(2))


def test_every_policy_gets_the_same_jobs():
    runs = [simulate(WTB_LAB, WTB, policy) for policy in POLICIES.values()]
    shapes = [[(j.submitted, [t.run for s in j.steps for t in s.tasks]) for j in run.jobs] for run in runs]
    assert shapes[0] == shapes[1] == shapes[2]


CI_LAB = parse_lab(EXAMPLES / "ci-lab.yaml")
CI = parse_workload(EXAMPLES / "ci-workload.yaml").with_duration(1800)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("example", ["wtb", "ci"])
def test_planning_host_by_host_is_exact(policy, example):
    """Per-host planning (the fast path) gives what planning the whole lab after every change gives,
    and planning again only where the queue changed misses nothing that planning again after every
    non-empty plan would find."""
    lab, load = (WTB_LAB, WTB) if example == "wtb" else (CI_LAB, CI)
    fast = summary(lab, load, policy)
    slow = summary(lab, load, policy, per_group=False, settle=True)
    fast.pop("plan_calls")
    slow.pop("plan_calls")
    assert fast == slow


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_plan_keeps_the_scheduler_guarantees_even_with_faults(policy):
    faulty = dataclasses.replace(
        WTB,
        faults=dataclasses.replace(
            WTB.faults, revert_failure=0.05, vm_offline_rate=1 / 86400, host_crash_rate=1 / 86400
        ),
    )
    result = simulate(WTB_LAB, faulty, checked(POLICIES[policy]))
    assert result.revert_failures and result.vm_breaks and result.host_crashes
    assert all(job.ended is not None for job in result.jobs)


ONE_AT_0 = "  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 60s}}\n"
ONE_STEP = "name: one\nsteps:\n  - {name: run, vms: [v1], run: x, timeout: 1h}\n"
BUILD_TEST = """name: bt
steps:
  - {name: build, vms: [b], run: make}
  - {name: test, after: build, vms: [t], run: make test}
"""


def test_a_task_waits_for_its_revert_then_runs(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 30s\ntemplates:\n" + ONE_AT_0,
        {"one.yaml": ONE_STEP},
    )
    for policy in POLICIES.values():
        (job,) = simulate(host_lab({"h1": ["v1"]}), load, policy).jobs
        assert (job.status, job.ended) == ("completed", 90.0)


def test_preparing_ahead_hides_the_next_steps_revert(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 30s\ntemplates:\n"
        "  - {job: bt.yaml, arrivals: {at: [0s]}, steps: {build: 100s, test: 50s}}\n",
        {"bt.yaml": BUILD_TEST},
    )
    lab = host_lab({"h1": ["b"], "h2": ["t"]}, "max_ready_when_idle: 0")
    ends = {name: simulate(lab, load, POLICIES[name]).jobs[0].ended for name in POLICIES}
    assert ends == {"testlab": 180.0, "no-prepare": 210.0, "fifo": 210.0}


def test_priorities_are_testlabs_and_arrival_order_is_fifos(tmp_path):
    urgent = ONE_STEP.replace("name: one", "name: urgent\npriority: 10")
    load = workload(
        tmp_path,
        "duration: 10s\nrevert: 30s\ntemplates:\n"
        "  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 60s}}\n"
        "  - {job: urgent.yaml, arrivals: {at: [1s]}, steps: {run: 60s}}\n",
        {"one.yaml": ONE_STEP, "urgent.yaml": urgent},
    )
    lab = host_lab({"h1": ["v1"]})
    first = {
        name: min(simulate(lab, load, POLICIES[name]).jobs, key=lambda j: j.ended).template
        for name in POLICIES
    }
    assert first == {"testlab": "urgent", "no-prepare": "urgent", "fifo": "one"}


def test_a_failed_step_skips_the_next_and_a_long_task_times_out(tmp_path):
    job = BUILD_TEST.replace("run: make}", "run: make, timeout: 1m}", 1)
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 10s\ntemplates:\n"
        "  - {job: bt.yaml, arrivals: {at: [0s]}, steps: {build: {mean: 30s, fail: 1}, test: 10s}}\n"
        "  - {job: slow.yaml, arrivals: {at: [0s]}, steps: {build: 2m, test: 10s}}\n",
        {"bt.yaml": BUILD_TEST, "slow.yaml": job.replace("name: bt", "name: slow")},
    )
    failed, slow = simulate(host_lab({"h1": ["b"], "h2": ["t"]}), load, POLICIES["testlab"]).jobs
    assert failed.status == "failed" and [t.status for t in failed.steps[1].tasks] == ["skipped"]
    assert slow.status == "timeout" and slow.steps[0].tasks[0].ended - slow.steps[0].tasks[0].started == 60


def test_a_vm_that_never_reverts_goes_offline_and_its_jobs_never_end(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 10s\nfaults: {revert_failure: 1}\nengine: {max_vm_errors: 2}\n"
        "templates:\n  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 60s}}\n",
        {"one.yaml": ONE_STEP},
    )
    lab = host_lab({"h1": ["v1"]})
    result = simulate(lab, load, POLICIES["testlab"], until=86400)
    data = summarize(result, lower_bound(result.jobs, lab, load), lab)
    assert data["jobs_unfinished"] == 1 and data["makespan"] is None
    assert data["revert_failures"] == 2 and data["blocked"] == {"v1": "vm v1 is offline"}


def test_lost_work_is_retried_up_to_the_try_limit(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 10s\nfaults: {host_crash: {rate: 1/m, repair: 1m}}\nengine: {max_tries: 2}\n"
        "templates:\n  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 1h}}\n",
        {"one.yaml": ONE_STEP},
    )
    result = simulate(host_lab({"h1": ["v1"]}), load, POLICIES["testlab"])
    (job,) = result.jobs
    assert job.status == "boterror" and job.steps[0].tasks[0].tries == 2
    assert result.requeued == 2 and result.host_crashes >= 2


def test_a_broken_vm_comes_back_after_its_repair(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 10s\nfaults: {vm_offline: {rate: 1/h, repair: 2h}}\n"
        "templates:\n  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 5h}}\n",
        {"one.yaml": ONE_STEP},
    )
    result = simulate(host_lab({"h1": ["v1"]}), load, POLICIES["testlab"])
    (job,) = result.jobs
    assert result.vm_breaks >= 1 and job.status in ("completed", "boterror")


def test_a_host_that_allows_nothing_blocks_its_jobs(tmp_path):
    load = workload(
        tmp_path,
        "duration: 1s\nrevert: 10s\ntemplates:\n" + ONE_AT_0,
        {"one.yaml": ONE_STEP},
    )
    result = simulate(host_lab({"h1": ["v1"]}, "max_running: 0"), load, POLICIES["testlab"])
    assert result.jobs[0].ended is None
    assert result.blocked == {"v1": "host h1 allows no running vm (max_running is 0)"}


def test_engine_latency_delays_every_reaction(tmp_path):
    text = "duration: 1s\nrevert: 30s\nengine: {latency: 1s}\ntemplates:\n"
    text += "  - {job: one.yaml, arrivals: {at: [0s]}, steps: {run: 60s}}\n"
    load = workload(tmp_path, text, {"one.yaml": ONE_STEP})
    (job,) = simulate(host_lab({"h1": ["v1"]}), load, POLICIES["testlab"]).jobs
    assert job.ended == 92.0  # planned 1s after the arrival, and 1s after the revert ended
