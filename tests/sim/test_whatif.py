"""What-if changes to the lab and the workload."""

from __future__ import annotations

import pytest

from testlab.sim.runner import run_specs
from testlab.sim.whatif import WhatIfError, apply_what_if
from testlab.sim.workload import parse_workload
from tests.sim import EXAMPLES, lab

WTB = lab((EXAMPLES / "wtb-lab.yaml").read_text())
LOAD = parse_workload(EXAMPLES / "wtb-workload.yaml")


def test_host_limits():
    changed, _ = apply_what_if("host vmhost3 max_running=2 sleep_after_revert=10s", WTB, LOAD)
    limits = changed.host("vmhost3").limits
    assert (limits.max_running, limits.sleep_after_revert) == (2, 10.0)
    assert changed.host("vmhost2").limits == WTB.host("vmhost2").limits
    every, _ = apply_what_if("host 'vmhost*' max_active=3", WTB, LOAD)
    assert {h.name for h in every.hosts if h.limits.max_active == 3} == {f"vmhost{i}" for i in range(1, 6)}


def test_moving_vms_and_sharing_domains():
    added, _ = apply_what_if("add-host vmhost6 like vmhost5", WTB, LOAD)
    moved, _ = apply_what_if("vm 'w11*' host=vmhost6", added, LOAD)
    assert moved.host("vmhost6").limits == WTB.host("vmhost5").limits
    assert {v.name for v in moved.vms if v.host == "vmhost6"} == {"w11pro64", "w11pro64-amd"}
    shared, _ = apply_what_if("vm w10pro64-pt domain=w10pro64", WTB, LOAD)
    assert shared.vm("w10pro64-pt").domain == "w10pro64"


def test_load_and_revert():
    _, heavier = apply_what_if("load 2", WTB, LOAD)
    assert heavier.templates[0].arrivals.rate == 2 * LOAD.templates[0].arrivals.rate
    assert heavier.templates[2].arrivals.every == LOAD.templates[2].arrivals.every / 2
    _, faster = apply_what_if("revert mean=40s sd=10s", WTB, LOAD)
    assert (faster.revert.mean, faster.revert.sd) == (40.0, 10.0)
    _, constant = apply_what_if("revert 40s", WTB, LOAD)
    assert constant.revert.kind == "constant"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("hosts vmhost3 max_running=2", "unknown change 'hosts'"),
        ("host vmhost9 max_running=2", "no host matches 'vmhost9'"),
        ("host vmhost3 max_runing=2", "unknown key 'max_runing'"),
        ("host vmhost3 max_running=two", "max_running: expected a non-negative integer, got 'two'"),
        ("host vmhost3", "expected KEY=VALUE"),
        ("vm w7u host=nowhere", "unknown host 'nowhere'"),
        ("vm w1064-fr snapshot=clean", "unknown key 'snapshot'"),
        ("vm w1064-fr domain=w1064 role=gone", "role: expected one of base, extra, retired"),
        ("vm w7u-64 domain=w7u snapshot=x", "unknown key"),
        ("add-host vmhost1 like vmhost2", "host 'vmhost1' already exists"),
        ("add-host vmhost6 as vmhost2", "expected: add-host NAME like HOST"),
        ("load -1", "expected one factor more than 0"),
        ("revert sd=3s", "expected mean=DURATION"),
        ("host 'unclosed", "No closing quotation"),
    ],
)
def test_bad_what_ifs_are_one_line_errors(text, message):
    with pytest.raises(WhatIfError) as error:
        apply_what_if(text, WTB, LOAD)
    assert str(error.value).startswith(f"what-if {text!r}: ") and message in str(error.value)


def test_same_snapshot_on_a_shared_domain_is_refused():
    with pytest.raises(
        WhatIfError, match="would share domain 'w7u' on host 'vmhost1' with the same snapshot"
    ):
        apply_what_if("vm w7u-64 domain=w7u", WTB, LOAD)


def test_what_if_runs_come_after_the_unchanged_ones():
    specs = run_specs(WTB, LOAD, ["testlab", "fifo"], ["host vmhost1 max_running=2"])
    assert [s.name for s in specs] == ["testlab", "fifo", "testlab (what-if)", "fifo (what-if)"]
    assert specs[2].lab.host("vmhost1").limits.max_running == 2
