"""The event history is numbered in the order the rows it records changed: an administrator's status
change that waits for the engine's lock on its VM is numbered after the engine's events, not before.
Replaying the history by number (tests/engine/harness.py, `check_history`) depends on it."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

from testlab.db.models import VM, Event
from testlab.db.session import is_sqlite, run_transaction, session_scope
from testlab.domain.statuses import VMStatus
from testlab.services import vms as vm_service
from testlab.services.transitions import record_event
from tests.engine.harness import make_lab


def test_a_status_change_waiting_for_its_row_is_numbered_after_the_holder_s_events(
    settings, tmp_path
) -> None:
    if is_sqlite(settings.database_url):
        pytest.skip("SQLite's writers take the whole database's lock before their first statement")
    make_lab(settings, tmp_path / "vms", {"h1": ["v1", "v2"]})

    def into_maintenance(session) -> None:
        vm = vm_service.get_vm(session, "v1")
        vm.status = VMStatus.MAINTENANCE

    run_transaction(settings.database_url, into_maintenance)
    with session_scope(settings.database_url, actor="engine 1") as engine:
        # The engine locks the host's rows as a round's record does (testlab/engine/dispatch.py).
        engine.execute(text("SELECT id FROM vms FOR NO KEY UPDATE"))
        admin = threading.Thread(
            target=run_transaction,
            args=(settings.database_url, lambda s: vm_service.end_maintenance(s, vm_service.get_vm(s, "v1"))),
            kwargs={"actor": "admin"},
        )
        admin.start()
        time.sleep(0.5)  # the administrator's change is under way, waiting for the row
        v2 = engine.scalars(select(VM).where(VM.name == "v2")).one()
        record_event(
            engine, "vm", "revert to clean (needed)", vm=v2, old=VMStatus.OFF, new=VMStatus.REVERTING
        )
    admin.join(30)
    assert not admin.is_alive()
    with session_scope(settings.database_url, readonly=True) as session:
        order = [
            actor
            for (actor,) in session.execute(select(Event.actor).where(Event.kind == "vm").order_by(Event.id))
        ]
    assert order[-2:] == ["engine 1", "admin"]
