"""Pool steps in the simulator: N tasks, each on whichever VM of the pool is free first."""

from __future__ import annotations

import pytest

from testlab.scheduler import HostLimits, PowerOff, Revert, StartTask
from testlab.sim.bound import lower_bound
from testlab.sim.distributions import lognormal
from testlab.sim.fifo import fifo_plan
from testlab.sim.jobs import draw_pool_outcome, generate_jobs
from testlab.sim.metrics import summarize
from testlab.sim.policies import POLICIES
from testlab.sim.simulator import Simulation, simulate
from testlab.sim.whatif import apply_what_if
from testlab.sim.workload import StepTimes
from tests.sim import lab, workload
from tests.sim.test_simulator import checked
from tests.unit.scheduler import lab as snapshot_of
from tests.unit.scheduler import pool_task, task, vm

ROOMY = "{max_active: 2, max_running: 2, max_reverting: 2, max_reverts_while_running: 2}"
# Pool [p]: p1 and p2 on h1, p3 on h2 (three VMs). q1 on h2 and b on h3 are pinned targets only.
LAB = f"""hosts:
  - {{name: h1, backend: libvirt, uri: 'test:///h1', limits: {ROOMY}}}
  - {{name: h2, backend: libvirt, uri: 'test:///h2', limits: {ROOMY}}}
  - {{name: h3, backend: libvirt, uri: 'test:///h3', limits: {ROOMY}}}
vms:
  - {{name: p1, host: h1, domain: p1, snapshot: s, labels: [p]}}
  - {{name: p2, host: h1, domain: p2, snapshot: s, labels: [p]}}
  - {{name: p3, host: h2, domain: p3, snapshot: s, labels: [p]}}
  - {{name: q1, host: h2, domain: q1, snapshot: s, labels: [q]}}
  - {{name: b, host: h3, domain: b, snapshot: s, labels: [b]}}
"""
POOL = ("p1", "p2", "p3")
SEVEN = "name: seven\nsteps:\n  - {name: test, labels: [p], count: 7, run: x, timeout: 1h}\n"
BUILD_POOL = """name: build-pool
steps:
  - {name: build, vms: [b], run: make}
  - {name: test, after: build, labels: [p], count: 4, run: make test}
  - {name: other, vms: [q1], run: make other}
"""


def pool_workload(tmp_path, templates: str, head: str = "duration: 1s\nrevert: 30s\n"):
    return workload(
        tmp_path, head + "templates:\n" + templates, {"seven.yaml": SEVEN, "build-pool.yaml": BUILD_POOL}
    )


def ran_once_on_the_pool(result) -> None:
    """Every pool task ended completed on a VM of its pool, started once; no VM ran two at a time."""
    tasks = [t for j in result.jobs for s in j.steps for t in s.tasks]
    assert all(t.status == "completed" and t.tries == 1 for t in tasks)
    assert len(result.waits) == len(tasks)  # one first start per task
    per_vm: dict[str, list] = {}
    for t in tasks:
        if t.pool is not None:
            assert t.vm in POOL, t
        per_vm.setdefault(t.vm, []).append((t.started, t.ended))
    for runs in per_vm.values():
        runs.sort()
        assert all(end <= start for (_, end), (start, _) in zip(runs, runs[1:], strict=False)), runs


@pytest.mark.parametrize("policy", list(POLICIES))
def test_seven_tasks_on_a_pool_of_three_each_run_once_on_one_of_its_vms(tmp_path, policy):
    load = pool_workload(tmp_path, "  - {job: seven.yaml, arrivals: {at: [0s]}, steps: {test: 60s}}\n")
    result = simulate(lab(LAB), load, checked(POLICIES[policy]))
    (job,) = result.jobs
    assert job.status == "completed" and len(job.steps[0].tasks) == 7
    ran_once_on_the_pool(result)
    assert {t.vm for t in job.steps[0].tasks} == set(POOL)
    # Three VMs, each reverted before each task: three rounds of revert and run.
    assert job.ended == 3 * (30 + 60)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_pool_step_after_a_build_with_other_jobs_around(tmp_path, policy):
    load = pool_workload(
        tmp_path,
        "  - {job: build-pool.yaml, arrivals: {rate: 6/h}, steps: {build: 5m, test: 3m, other: 2m}}\n"
        "  - {job: seven.yaml, arrivals: {rate: 2/h}, steps: {test: {mean: 4m, sd: 1m}}}\n",
        head="duration: 4h\nrevert: {mean: 40s, sd: 10s}\n",
    )
    result = simulate(lab(LAB), load, checked(POLICIES[policy]))
    assert all(job.ended is not None for job in result.jobs) and len(result.jobs) > 20
    ran_once_on_the_pool(result)
    for job in result.jobs:  # no test task starts before its job's build ended
        if job.template == "build-pool":
            build, test, _ = job.steps
            assert min(t.started for t in test.tasks) >= build.tasks[0].ended


def test_pool_run_times_follow_the_vm_and_are_the_same_for_every_policy(tmp_path):
    times = "{mean: 2m, sd: 30s, vms: {p3: {mean: 10m, sd: 1m}}}"
    load = pool_workload(
        tmp_path,
        f"  - {{job: seven.yaml, arrivals: {{rate: 3/h}}, steps: {{test: {times}}}}}\n",
        "duration: 3h\nrevert: 30s\n",
    )
    on_p3 = set()
    for policy in POLICIES.values():
        result = simulate(lab(LAB), load, policy)
        for job in result.jobs:
            step = job.steps[0]
            for t in step.tasks:
                run, _ = draw_pool_outcome(step.times, t.vm, step.timeout, t.draw_key)
                assert t.ended - t.started == pytest.approx(run)
                assert t.run <= run + 1e-9  # what the bound counts: its shortest run on the pool
                if t.vm == "p3":
                    on_p3.add(t.id)
    assert on_p3  # the slow VM was used


def test_a_pool_tasks_outcome_does_not_depend_on_its_vm():
    times = StepTimes(run=lognormal(120, 30), fail=0.5, vms=(("p3", lognormal(600, 60)),))
    for n in range(50):
        key = f"1:task:0:0:test:{n}"
        fast = draw_pool_outcome(times, "p1", 3600, key)
        slow = draw_pool_outcome(times, "p3", 3600, key)
        assert fast[1] == slow[1] and fast[0] < slow[0]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_requeued_pool_task_runs_again_on_any_vm_of_its_pool(tmp_path, policy):
    load = pool_workload(
        tmp_path,
        "  - {job: seven.yaml, arrivals: {rate: 4/h}, steps: {test: 20m}}\n",
        head="duration: 3h\nrevert: 30s\nfaults: {host_crash: {rate: 1/2h, repair: 10m}}\n"
        "engine: {max_tries: 10}\n",
    )
    result = simulate(lab(LAB), load, checked(POLICIES[policy]))
    assert result.requeued and all(job.ended is not None for job in result.jobs)
    tasks = [t for j in result.jobs for s in j.steps for t in s.tasks]
    assert any(t.tries > 1 for t in tasks)
    assert all(t.vm in POOL and t.status == "completed" for t in tasks)


def summary(lab_def, load, policy, **kwargs):
    result = Simulation(lab_def, load, POLICIES[policy], **kwargs).run()
    data = summarize(result, lower_bound(result.jobs, lab_def, load), lab_def)
    data.pop("wall_seconds")
    data.pop("plan_calls")
    data["vms"] = [t.vm for j in result.jobs for s in j.steps for t in s.tasks]
    return data


def faulty(tmp_path):
    return pool_workload(
        tmp_path,
        "  - {job: build-pool.yaml, arrivals: {rate: 6/h}, steps: {build: 5m, test: 3m, other: 2m}}\n"
        "  - {job: seven.yaml, arrivals: {rate: 2/h}, steps: {test: {mean: 4m, sd: 1m}}}\n",
        head="duration: 4h\nrevert: {mean: 40s, sd: 10s}\n"
        "faults: {revert_failure: 0.05, vm_offline: {rate: 1/3h, repair: 20m}, host_crash: {rate: 1/6h}}\n",
    )


@pytest.mark.parametrize("policy", list(POLICIES))
def test_planning_by_groups_is_exact_with_pools_and_faults(tmp_path, policy):
    """Planning a host alone, or with its group while a pool task is queued there, gives what
    planning the whole lab again after every change gives, faults included."""
    load = faulty(tmp_path)
    fast = summary(lab(LAB), load, policy)
    slow = summary(lab(LAB), load, policy, per_group=False, settle=True)
    assert fast["revert_failures"] and fast["vm_breaks"] and fast["host_crashes"]
    assert fast == slow


def test_same_seed_same_result_other_seed_other_result(tmp_path):
    load = faulty(tmp_path)
    assert summary(lab(LAB), load, "testlab") == summary(lab(LAB), load, "testlab")
    assert summary(lab(LAB), load, "testlab") != summary(lab(LAB), load.with_seed(2), "testlab")
    jobs = [generate_jobs(load, lab(LAB)) for _ in range(2)]
    keys = [[(t.run, t.outcome, t.draw_key) for j in js for s in j.steps for t in s.tasks] for js in jobs]
    assert keys[0] == keys[1]


def test_a_what_if_shrinking_the_pool_is_simulated(tmp_path):
    load = pool_workload(tmp_path, "  - {job: seven.yaml, arrivals: {at: [0s]}, steps: {test: 60s}}\n")
    smaller, _ = apply_what_if("vm p3 role=extra", lab(LAB), load)
    moved, _ = apply_what_if("vm p2 host=h3", lab(LAB), load)
    (job,) = simulate(smaller, load, POLICIES["testlab"]).jobs
    assert {t.vm for t in job.steps[0].tasks} == {"p1", "p2"}
    assert job.ended == 4 * (30 + 60)  # seven tasks on two VMs
    (job,) = simulate(moved, load, POLICIES["testlab"]).jobs
    assert {t.vm for t in job.steps[0].tasks} == set(POOL) and job.ended == 3 * 90


# ---------------------------------------------------------------------- FIFO with pools

FIFO_LIMITS = HostLimits(max_active=3, max_running=3, max_reverting=3, max_reverts_while_running=3)


def test_fifo_gives_a_pool_task_the_first_idle_vm_of_its_pool():
    pool = ("c", "a", "b")
    snap = snapshot_of(
        [vm("a", "off"), vm("b", "idle"), vm("c", "idle")],
        [pool_task(1, pool, job=1), pool_task(2, pool, job=1), pool_task(3, pool, job=1)],
        limits=FIFO_LIMITS,
    )
    assert fifo_plan(snap).actions == (StartTask(1, "b"), StartTask(2, "c"), Revert(vm="a"))


def test_fifo_waits_for_a_vm_being_reverted_rather_than_revert_another():
    pool = ("a", "b")
    snap = snapshot_of(
        [vm("a", "reverting", busy=True), vm("b", "off")], [pool_task(1, pool)], limits=FIFO_LIMITS
    )
    assert fifo_plan(snap).actions == ()
    two = snapshot_of(
        [vm("a", "reverting", busy=True), vm("b", "off")],
        [pool_task(1, pool, job=1), pool_task(2, pool, job=1)],
        limits=FIFO_LIMITS,
    )
    assert fifo_plan(two).actions == (Revert(vm="b"),)


def test_fifo_serves_pool_and_pinned_tasks_in_submission_order():
    pool = ("a", "b")
    snap = snapshot_of(
        [vm("a", "idle"), vm("b", "off")],
        [task(1, "a", priority=1, job=2), pool_task(2, pool, priority=9, job=1)],
        limits=FIFO_LIMITS,
    )
    assert fifo_plan(snap).actions == (StartTask(2, "a"),)  # job 1 came first: it takes a


def test_fifo_takes_a_vm_on_another_host_or_makes_room():
    pool = ("a", "b")
    full = HostLimits(max_active=1, max_running=1, max_reverting=1, max_reverts_while_running=1)
    vms = [vm("a", "off", host="h1"), vm("x", "dirty", host="h1"), vm("b", "off", host="h2")]
    assert fifo_plan(snapshot_of(vms, [pool_task(1, pool)], limits=full)).actions == (Revert(vm="b"),)
    vms[2] = vm("b", "off", host="h2", maintenance_requested=True)
    assert fifo_plan(snapshot_of(vms, [pool_task(1, pool)], limits=full)).actions == (
        PowerOff(vm="x", reason="sacrifice"),
    )


# ---------------------------------------------------------------------- the bound with pools


def test_the_bound_spreads_pool_work_over_the_pools_hosts_and_domains(tmp_path):
    load = pool_workload(tmp_path, "  - {job: seven.yaml, arrivals: {at: [0s]}, steps: {test: 60s}}\n")
    bound = lower_bound(generate_jobs(load, lab(LAB)), lab(LAB), load)
    # Seven reverts and runs on the pool's three domains, each doing one at a time: 7 * 90 / 3.
    assert (bound.value, bound.bottleneck) == (210.0, "pool [p] (3 domains)")
    one_slot = lab(LAB.replace(ROOMY, "{max_active: 1, max_running: 1, max_reverting: 1}"))
    bound = lower_bound(generate_jobs(load, one_slot), one_slot, load)
    # One VM active per host, on the pool's two hosts: (7 * 60 + 7 * 30) / 2.
    assert (bound.value, bound.bottleneck) == (315.0, "pool [p] (2 hosts)")


def test_pinned_work_on_a_pools_hosts_counts_with_the_pool(tmp_path):
    load = pool_workload(
        tmp_path,
        "  - {job: seven.yaml, arrivals: {at: [0s]}, steps: {test: 60s}}\n"
        "  - {job: build-pool.yaml, arrivals: {at: [0s]}, steps: {build: 10s, test: 60s, other: 600s}}\n",
    )
    one_slot = lab(LAB.replace(ROOMY, "{max_active: 1, max_running: 1, max_reverting: 1}"))
    bound = lower_bound(generate_jobs(load, one_slot), one_slot, load)
    # h1 and h2 run the eleven pool tasks and q1's 600s task: (11 * 90 + 630) / 2 hosts.
    assert (bound.value, bound.bottleneck) == (810.0, "pool [p] (2 hosts)")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_no_policy_beats_the_bound_with_pools(tmp_path, policy):
    load = pool_workload(
        tmp_path,
        "  - {job: build-pool.yaml, arrivals: {rate: 8/h}, steps: {build: 5m, test: 3m, other: 2m}}\n"
        "  - {job: seven.yaml, arrivals: {rate: 3/h}, steps: {test: 4m}}\n",
        head="duration: 6h\nrevert: 40s\n",
    )
    result = simulate(lab(LAB), load, POLICIES[policy])
    bound = lower_bound(result.jobs, lab(LAB), load)
    assert bound.value <= max(job.ended for job in result.jobs) <= 1.5 * bound.value
