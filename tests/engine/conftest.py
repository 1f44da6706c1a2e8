from __future__ import annotations

import pytest

from tests.engine.harness import EngineProcess, power_off_lab


@pytest.fixture
def settings(lab_db):
    yield lab_db.settings
    power_off_lab(lab_db.settings)


@pytest.fixture
def engine_process(settings):
    engines: list[EngineProcess] = []

    def start(extra_env: dict[str, str] | None = None) -> EngineProcess:
        engine = EngineProcess(settings, extra_env).start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.stop()
