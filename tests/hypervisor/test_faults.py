"""Fault plans: deterministic, describable as data, counted across processes when asked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testlab.hypervisor import FaultPlan, FaultyBackend, open_backend
from testlab.hypervisor.base import Backend, DomainState, HostUnreachable, OperationFailed, SnapshotMissing

from .conftest import LIBVIRT_LAB


def faulty(backend: Backend, *rules: dict[str, object], **plan: object) -> FaultyBackend:
    return FaultyBackend(backend, FaultPlan.from_dict({"rules": list(rules), **plan}))


def test_fail_the_nth_call_of_a_domain(libvirt_backend: Backend) -> None:
    backend = faulty(
        libvirt_backend,
        {"op": "revert", "domain": "d1", "nth": 2, "action": "fail", "error": "HostUnreachable"},
    )
    backend.revert("d1", "clean")
    backend.revert("d2", "clean")  # another domain does not count
    with pytest.raises(HostUnreachable, match="injected"):
        backend.revert("d1", "clean")
    backend.revert("d1", "clean")


def test_times_extends_a_rule_and_zero_means_forever(libvirt_backend: Backend) -> None:
    backend = faulty(libvirt_backend, {"op": "state", "nth": 2, "times": 0, "action": "fail"})
    assert backend.state("d1") == DomainState.OFF
    for _ in range(3):
        with pytest.raises(OperationFailed):
            backend.state("d1")


def test_counters_in_a_state_file_span_processes(tmp_path: Path, libvirt_backend: Backend) -> None:
    plan = {
        "state_file": str(tmp_path / "counts.json"),
        "rules": [{"op": "revert", "domain": "d1", "nth": 2, "action": "fail", "error": "SnapshotMissing"}],
    }
    backend = FaultyBackend(libvirt_backend, FaultPlan.from_dict(plan))
    backend.revert("d1", "clean")
    lab = tmp_path / "other-lab.xml"
    lab.write_bytes(LIBVIRT_LAB.read_bytes())
    code = (
        "import json, sys\n"
        "from testlab.hypervisor import open_backend\n"
        "b = open_backend('libvirt', 'vmhost', sys.argv[1], {'faults': json.loads(sys.argv[2])})\n"
        "try:\n    b.revert('d1', 'clean')\nexcept Exception as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"test://{lab}", json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "SnapshotMissing", out.stderr
    backend.revert("d1", "clean")  # the third call passes
    assert json.loads((tmp_path / "counts.json").read_text()) == {"0": 3}


def test_delays_fixed_and_seeded_random(libvirt_backend: Backend) -> None:
    backend = faulty(libvirt_backend, {"op": "state", "action": "delay", "seconds": 0.2})
    started = time.monotonic()
    backend.state("d1")
    assert time.monotonic() - started >= 0.2

    def draws(seed: int) -> list[float]:
        b = faulty(libvirt_backend, {"op": "state", "action": "delay", "seconds": [0.0, 0.01]}, seed=seed)
        return [b._seconds(b.plan.rules[0], 0.0) for _ in range(5)]

    assert draws(7) == draws(7) != draws(8)


def test_probability_is_reproducible_with_a_seed(libvirt_backend: Backend) -> None:
    def outcomes(seed: int) -> list[bool]:
        b = faulty(libvirt_backend, {"op": "state", "action": "fail", "probability": 0.5}, seed=seed)
        result = []
        for _ in range(20):
            try:
                b.state("d1")
                result.append(True)
            except OperationFailed:
                result.append(False)
        return result

    first = outcomes(42)
    assert first == outcomes(42)
    assert True in first and False in first


def test_power_off_behind_the_engines_back(libvirt_backend: Backend) -> None:
    backend = faulty(
        libvirt_backend,
        {"op": "state", "domain": "d1", "nth": 2, "action": "power_off"},
        {"op": "power_on", "domain": "d2", "action": "power_off", "after": True},
    )
    backend.power_on("d1")
    assert backend.state("d1") == DomainState.RUNNING
    assert backend.state("d1") == DomainState.OFF
    backend.power_on("d2")
    assert backend.state("d2") == DomainState.OFF
    backend.power_on("shared")
    backend.power_off_behind_back("shared")
    assert backend.state("shared") == DomainState.OFF


def agent_answers(backend: Backend, domain: str) -> bool:
    address = backend.agent_address(domain)
    assert address is not None
    request = urllib.request.Request(
        f"{address.url}/v1/info", headers={"Authorization": f"Bearer {address.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=0.5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def test_broken_revert_on_local_kills_the_agent(local_backend: Backend) -> None:
    backend = faulty(local_backend, {"op": "revert", "action": "broken_revert"})
    backend.revert("d1", "clean")  # "succeeds"
    assert not agent_answers(local_backend, "d1")
    assert backend.state("d1") == DomainState.OFF


def test_broken_revert_can_freeze_the_agent_of_a_running_looking_domain(local_backend: Backend) -> None:
    backend = faulty(local_backend, {"op": "revert", "action": "broken_revert", "mode": "stop"})
    backend.revert("d1", "clean")
    assert backend.state("d1") == DomainState.RUNNING
    assert not agent_answers(local_backend, "d1")
    backend.power_off("d1")  # a frozen agent still powers off
    assert backend.state("d1") == DomainState.OFF


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ([{"op": "revert", "action": "explode"}], "unknown action"),
        ([{"op": "reboot", "action": "fail"}], "unknown op"),
        ([{"op": "revert", "action": "fail", "error": "Nope"}], "unknown error"),
        ([{"op": "revert", "action": "fail", "nth": 0}], "nth counts from 1"),
        ([{"op": "revert", "action": "fail", "colour": "red"}], "unknown keys"),
        ([{"action": "fail"}], "needs 'op'"),
        ({"rules": [], "sed": 1}, "unknown keys"),
    ],
)
def test_bad_plans_are_refused(data: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        FaultPlan.from_dict(data)  # type: ignore[arg-type]


def test_plan_round_trips_through_json(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = FaultPlan.from_dict(
        {
            "seed": 3,
            "rules": [
                {"op": "revert", "nth": 2, "action": "fail"},
                {"op": "*", "action": "delay", "seconds": [0, 1]},
            ],
        }
    )
    again = FaultPlan.from_json(json.dumps(plan.to_dict()))
    assert again.rules == plan.rules and again.seed == 3
    monkeypatch.setenv("TESTLAB_FAULT_PLAN", json.dumps(plan.to_dict()))
    loaded = FaultPlan.from_env()
    assert loaded is not None and loaded.rules == plan.rules
    with pytest.raises(ValueError, match="not valid JSON"):
        FaultPlan.from_json("{")


def test_open_backend_wraps_with_faults(tmp_path: Path) -> None:
    lab = tmp_path / "lab.xml"
    lab.write_bytes(LIBVIRT_LAB.read_bytes())
    backend = open_backend(
        "libvirt",
        "vmhost",
        f"test://{lab}",
        {"faults": [{"op": "revert", "action": "fail", "error": "SnapshotMissing"}]},
    )
    assert isinstance(backend, FaultyBackend) and backend.kind == "libvirt"
    with pytest.raises(SnapshotMissing):
        backend.revert("d1", "clean")
    backend.close()
    with pytest.raises(ValueError, match="unknown backend"):
        open_backend("vmware", "h", "vmware://h")
