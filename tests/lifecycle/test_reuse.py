"""When a reused VM must be wiped after a task: one case per reason, and the default of each backend."""

from __future__ import annotations

import pytest

from testlab.lifecycle import DEFAULT_WIPE, ReusePolicy, Wipe, wipe_reason

REUSE = ReusePolicy(wipe=Wipe.REUSE)


def test_every_task_vms_are_always_wiped() -> None:
    assert (
        wipe_reason(ReusePolicy(), uses=1, outcome="completed", requested=False) == "wiped before every task"
    )


def test_a_reused_vm_that_did_well_runs_the_next_task_as_it_is() -> None:
    assert wipe_reason(REUSE, uses=40, outcome="completed", requested=False) is None
    assert wipe_reason(REUSE, uses=1, outcome="canceled", requested=False) is None


@pytest.mark.parametrize(
    ("policy", "uses", "outcome", "requested", "reason"),
    [
        (REUSE, 1, "completed", True, "wipe requested"),
        (REUSE, 1, None, False, "infrastructure error"),
        (REUSE, 1, "boterror", False, "infrastructure error"),
        (REUSE, 1, "failed", False, "task failed"),
        (REUSE, 1, "timeout", False, "task timeout"),
        (
            ReusePolicy(wipe=Wipe.REUSE, max_uses=3),
            3,
            "completed",
            False,
            "used 3 times since its last wipe (max_uses 3)",
        ),
        (
            ReusePolicy(wipe=Wipe.REUSE, wipe_after_failure=False),
            1,
            "boterror",
            False,
            "infrastructure error",
        ),
    ],
)
def test_each_reason_to_wipe(policy, uses, outcome, requested, reason) -> None:
    assert wipe_reason(policy, uses=uses, outcome=outcome, requested=requested) == reason


def test_failures_may_keep_the_machine_for_the_protection_rule() -> None:
    keep = ReusePolicy(wipe=Wipe.REUSE, wipe_after_failure=False, max_uses=5)
    assert wipe_reason(keep, uses=2, outcome="failed", requested=False) is None
    assert wipe_reason(keep, uses=5, outcome="failed", requested=False) is not None


def test_physical_hosts_are_reused_by_default_and_snapshots_reverted() -> None:
    assert DEFAULT_WIPE == {"local": "every-task", "libvirt": "every-task", "command": "reuse"}
