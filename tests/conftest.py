"""Shared fixtures: a real PostgreSQL server for the session, and a fresh database per test on either
SQLite or PostgreSQL (`lab_db`), with the settings the CLI reads from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testlab.config import Settings
from testlab.db.session import dispose_engines
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@dataclass
class LabDatabase:
    kind: str
    settings: Settings

    @property
    def env(self) -> dict[str, str]:
        return {"TESTLAB_HOME": str(self.settings.home), "TESTLAB_DB": self.settings.database_url}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lab_db(request, tmp_path: Path, monkeypatch) -> Iterator[LabDatabase]:
    """A fresh, empty database of each kind (not yet initialised), exported in the environment. This
    process's connections to it are closed after the test: a session of hundreds of PostgreSQL
    databases kept them all open until the server refused new clients."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'testlab.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    database = LabDatabase(request.param, Settings(home=home, database_url=url))
    for name, value in database.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TESTLAB_USER", "tester")
    yield database
    dispose_engines(url)


@pytest.fixture
def subprocess_env(lab_db: LabDatabase) -> dict[str, str]:
    """Environment for running `testlab` as a real subprocess against the test database."""
    return {**os.environ, **lab_db.env}
