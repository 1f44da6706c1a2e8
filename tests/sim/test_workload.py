"""The workload file: what it accepts, and one-line located errors for what it does not."""

from __future__ import annotations

import random

import pytest
import yaml

from testlab.domain.errors import DefinitionError
from testlab.domain.yamlsource import load_yaml
from testlab.sim.arrivals import parse_rate
from testlab.sim.distributions import fit, lognormal, parse_distribution
from testlab.sim.workload import parse_workload
from tests.sim import EXAMPLES, workload

JOB = """name: patch
priority: 50
steps:
  - {name: build, vms: [b], run: make}
  - {name: test, after: build, labels: [win], run: make test}
"""
GOOD = """seed: 1
duration: 2d                       # simulated time during which jobs arrive
revert: {mean: 90s, sd: 30s}       # revert + boot time of a VM (a lab-wide default)
templates:
  - job: patch.yaml                # a job file, relative to the workload file
    arrivals: {rate: 6/h}          # Poisson arrivals; also {every: 24h}
    priority: 40                   # optional: overrides the job file's
    steps:                         # run time per step name
      build: {mean: 15m, sd: 5m}
      test: {mean: 8m, sd: 3m}
"""


def test_the_format_of_the_issue_is_accepted(tmp_path):
    loaded = workload(tmp_path, GOOD, {"patch.yaml": JOB})
    assert loaded.seed == 1 and loaded.duration == 2 * 86400
    assert loaded.revert.mean == 90 and loaded.revert.sd == 30
    (template,) = loaded.templates
    assert template.name == "patch" and template.job.priority == 40
    assert template.arrivals.kind == "rate" and template.arrivals.rate == pytest.approx(6 / 3600)
    assert template.steps["build"].run.mean == 900 and template.steps["test"].run.sd == 180


def test_extensions_every_at_overrides_faults_and_engine(tmp_path):
    text = """seed: 7
duration: 1d
revert: 1m
poweroff: {min: 5s, max: 15s}
vms: {'w7*': {revert: {mean: 3m, sd: 1m}}}
faults:
  revert_failure: 0.01
  vm_offline: {rate: 1/30d, repair: {mean: 2h}}
  host_crash: {rate: 1/90d}
engine: {max_tries: 2, max_vm_errors: 4, monitor_interval: 2m, latency: 50ms}
templates:
  - job: patch.yaml
    name: nightly
    arrivals: {every: 24h, offset: 2h}
    steps:
      build: 10m
      test: {mean: 8m, sd: 3m, fail: 0.1, vms: {w7u: {samples: [1m, 2m]}}}
  - job: patch.yaml
    arrivals: {at: [0s, 90s, 1h]}
    steps: {build: 1m, test: 1m}
"""
    with pytest.raises(DefinitionError, match=r"engine.latency: expected a duration"):
        workload(tmp_path, text, {"patch.yaml": JOB})
    loaded = workload(tmp_path, text.replace("latency: 50ms", "latency: 0.05"), {"patch.yaml": JOB})
    assert loaded.revert_for("w7u").mean == 180 and loaded.revert_for("w10").mean == 60
    assert loaded.poweroff.kind == "uniform"
    assert loaded.faults.revert_failure == 0.01
    assert loaded.faults.vm_offline_rate == pytest.approx(1 / (30 * 86400))
    assert loaded.faults.host_repair.mean == 3600
    assert loaded.engine.max_tries == 2 and loaded.engine.latency == 0.05
    nightly, replay = loaded.templates
    assert nightly.name == "nightly" and nightly.arrivals.times(loaded.duration, random.Random(1)) == [7200]
    assert replay.arrivals.times(loaded.duration, random.Random(1)) == [0, 90, 3600]
    assert nightly.steps["test"].fail == 0.1
    assert nightly.steps["test"].for_vm("w7u").samples == (60, 120)
    assert nightly.steps["test"].for_vm("w10").mean == 480


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("duration: 2d  ", "# 2d  "), "workload.yaml:1: duration: missing required key"),
        (("duration: 2d", "duration: soon"), "workload.yaml:2: duration: expected a duration like"),
        (("seed: 1", "seed: one"), "workload.yaml:1: seed: expected an integer, got 'one'"),
        (("seed: 1", "sed: 1"), "workload.yaml:1: sed: unknown key (allowed: duration, engine, faults,"),
        (
            ("{rate: 6/h}", "{rate: 6}"),
            "workload.yaml:6: templates[0].arrivals.rate: expected a rate like 6/h",
        ),
        (("{rate: 6/h}", "{rate: 6/h, every: 1h}"), "templates[0].arrivals: give only one of rate, every"),
        (("{rate: 6/h}", "{}"), "workload.yaml:6: templates[0].arrivals: give one of rate, every or at"),
        (
            ("{mean: 15m, sd: 5m}", "{sd: 5m}"),
            "workload.yaml:9: templates[0].steps.build.mean: missing required",
        ),
        (("{mean: 15m, sd: 5m}", "{mean: 15m, sdev: 5m}"), "steps.build.sdev: unknown key (allowed: fail,"),
        (("{mean: 15m, sd: 5m}", "{min: 5m, max: 1m}"), "steps.build.max: must not be less than min (5m)"),
        (
            ("{mean: 8m, sd: 3m}", "{mean: 8m, fail: 2}"),
            "steps.test.fail: expected a probability between 0 and 1",
        ),
        (
            ("      test: {mean: 8m, sd: 3m}\n", ""),
            "workload.yaml:8: templates[0].steps: no run time for step 'test'",
        ),
        (
            ("      build:", "      built:"),
            "workload.yaml:9: templates[0].steps.built: job 'patch' has no step 'built'",
        ),
        (
            ("job: patch.yaml", "job: missing.yaml"),
            "workload.yaml:5: templates[0].job: no such job file: 'missing.yaml'",
        ),
        (("templates:\n", "templates: []\n"), "workload.yaml:4: templates: must not be an empty list"),
        (
            ("{mean: 90s, sd: 30s}", "[90s]"),
            "workload.yaml:3: revert: expected a duration (constant), {mean, sd}",
        ),
    ],
)
def test_errors_are_one_located_line(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    if old == "templates:\n":
        text = text.split("templates: []")[0] + "templates: []\n"
    with pytest.raises(DefinitionError) as error:
        workload(tmp_path, text, {"patch.yaml": JOB})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_errors_in_the_job_file_point_at_the_job_file(tmp_path):
    with pytest.raises(DefinitionError, match=r"patch.yaml:3: steps\[0\].run: missing required key"):
        workload(tmp_path, GOOD, {"patch.yaml": "name: p\nsteps:\n  - {name: build, vms: [b]}\n"})


def test_duplicate_template_names_are_refused(tmp_path):
    text = GOOD + "  - job: patch.yaml\n    arrivals: {every: 1h}\n    steps: {build: 1m, test: 1m}\n"
    with pytest.raises(DefinitionError, match="workload.yaml:11: templates.1..name: duplicate template name"):
        workload(tmp_path, text, {"patch.yaml": JOB})


def test_missing_workload_file():
    with pytest.raises(DefinitionError, match="nothere.yaml: no such file"):
        parse_workload(EXAMPLES / "nothere.yaml")


@pytest.mark.parametrize(("text", "per_hour"), [("6/h", 6), ("20/d", 20 / 24), ("1/30m", 2), ("0.5/h", 0.5)])
def test_rates(text, per_hour):
    assert parse_rate(text) * 3600 == pytest.approx(per_hour)


@pytest.mark.parametrize("text", ["6", "6/", "/h", "6/x", "six/h", "6/0s"])
def test_bad_rates(text):
    with pytest.raises(ValueError, match="expected a rate like 6/h"):
        parse_rate(text)


def test_poisson_arrivals_have_the_asked_rate(tmp_path):
    loaded = workload(tmp_path, GOOD.replace("2d", "100d"), {"patch.yaml": JOB})
    times = loaded.templates[0].arrivals.times(loaded.duration, random.Random(3))
    assert len(times) == pytest.approx(6 * 24 * 100, rel=0.05)
    assert times == sorted(times) and times[-1] < loaded.duration


def test_lognormal_has_the_asked_mean_and_sd():
    distribution = lognormal(90, 30)
    rng = random.Random(1)
    draws = [distribution.draw(rng) for _ in range(20000)]
    mean = sum(draws) / len(draws)
    sd = (sum((d - mean) ** 2 for d in draws) / len(draws)) ** 0.5
    assert mean == pytest.approx(90, rel=0.02) and sd == pytest.approx(30, rel=0.05)
    assert min(draws) > 0


def test_fit_reads_back_through_the_parser():
    fitted = fit([10, 12, 14, 9, 15])
    again = parse_distribution(load_yaml(yaml.safe_dump({"x": fitted.to_yaml()}), "w")["x"], "w", 1, "x")
    assert again.mean == pytest.approx(fitted.mean, rel=0.01) and again.sd == pytest.approx(
        fitted.sd, rel=0.01
    )
    assert fit([3, 3, 3]).kind == "constant"


def test_shipped_example_workloads_parse():
    for name in ("wtb-workload.yaml", "ci-workload.yaml"):
        assert parse_workload(EXAMPLES / name).templates
