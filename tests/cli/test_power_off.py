"""`testlab vm power-off`: sandbox agents outlive a stopped engine; this powers them off, never under
a running engine."""

from __future__ import annotations

from testlab.db.session import run_transaction
from testlab.engine import lease
from testlab.hypervisor import open_backend
from testlab.hypervisor.base import DomainState


def test_power_off_stops_sandboxes_and_records_them_off(testlab, lab_file, lab_db, tmp_path):
    testlab("lab", "apply", lab_file)
    backend = open_backend("local", "h2", f"local://{tmp_path / 'vms' / 'h2'}")
    backend.power_on("linux")
    assert backend.state("linux") == DomainState.RUNNING
    result = testlab("vm", "power-off", "linux")
    assert result.output.strip() == "powered off: linux"
    assert backend.state("linux") == DomainState.OFF
    assert "powered off: " in testlab("vm", "power-off", "--all").output


def test_power_off_refuses_while_an_engine_runs(testlab, lab_file, lab_db):
    testlab("lab", "apply", lab_file)
    run_transaction(lab_db.settings.database_url, lambda s: lease.acquire(s, lease.holder_id(), 60))
    result = testlab("vm", "power-off", "--all", expect=1)
    assert "an engine" in result.stderr and "is running" in result.stderr
    testlab("vm", "power-off", expect=2)
    testlab("vm", "power-off", "nosuch", "--all", expect=2)
