"""Host options and min_free_disk go from the lab file to the database and back, on both databases."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from testlab.db.models import Host
from testlab.db.session import session_scope

LAB = """\
hosts:
  - name: sandbox
    backend: local
    uri: local://{root}/vms
    min_free_disk: 5G
    options:
      spare_copies: false
      boot_timeout: 30s
      timeouts: {{revert: 10m}}
  - name: rack
    backend: command
    uri: command://rack
    min_free_disk: 1.5T
    commands:
      power_on: 'true'
      power_off: 'true'
      state: echo off
      revert: reinstall {{domain}} {{snapshot}}
    options:
      snapshots: [debian-12, win11]
      timeouts: {{revert: 1h30m}}
vms:
  - {{name: v1, host: sandbox, snapshot: clean}}
"""


def test_options_round_trip_through_the_database(testlab, lab_db, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(LAB.format(root=tmp_path))
    testlab("lab", "apply", lab)
    with session_scope(lab_db.settings.database_url, readonly=True) as session:
        hosts = {h.name: h for h in session.scalars(select(Host))}
        assert hosts["sandbox"].options == {
            "spare_copies": False,
            "boot_timeout": 30.0,
            "timeouts": {"revert": 600.0},
        }
        assert hosts["sandbox"].min_free_disk == 5 * 1024**3
        assert hosts["rack"].options == {"snapshots": ["debian-12", "win11"], "timeouts": {"revert": 5400.0}}
        assert hosts["rack"].min_free_disk == 1649267441664
    exported = tmp_path / "exported.yaml"
    exported.write_text(testlab("lab", "export").output)
    assert "min_free_disk: 1.5T" in exported.read_text()
    assert testlab("lab", "apply", exported).output.strip() == "lab unchanged"
    assert testlab("lab", "apply", lab).output.strip() == "lab unchanged"
