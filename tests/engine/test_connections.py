"""The engine's connections: a task started for the boot a revert just met uses that boot's agent
client without asking the backend where its agent listens again; a local host's work is done by a
local hypervisor process the engine starts and closes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from testlab.engine.connections import Connections
from testlab.engine.options import EngineOptions
from testlab.engine.work import VMRef
from testlab.hypervisor import FaultPlan, FaultyBackend, HostConfig, host_driver
from testlab.hypervisor.base import HostUnreachable
from testlab.hypervisor.local_process import LocalProcessBackend
from tests.hypervisor.conftest import make_local, shutdown


def test_a_task_for_the_boot_a_revert_met_does_not_ask_the_backend_again(tmp_path) -> None:
    backend = make_local(tmp_path)
    # Every call for the agent's address after the revert's own fails: a task that asks fails.
    faulty = FaultyBackend(
        backend,
        FaultPlan.from_dict(
            [{"op": "agent_address", "action": "fail", "nth": 2, "times": 0, "error": "HostUnreachable"}]
        ),
    )
    vm = VMRef(1, "v1", "localhost", "d1", "clean", None, None)

    async def scenario() -> None:
        connections = Connections(EngineOptions())
        connections.drivers["localhost"] = host_driver(faulty)
        try:
            address = await connections.driver("localhost").revert_and_locate("d1", "clean")
            client = connections.client(vm, address)
            info = await client.wait_until_up(timeout=30)
            connections.answered(vm, info.boot_id)
            assert await connections.agent(vm, boot_id=info.boot_id) is client
            with pytest.raises(HostUnreachable):  # another boot: the backend is asked
                await connections.agent(vm, boot_id=f"not {info.boot_id}")
            with pytest.raises(HostUnreachable):  # no boot said (a re-attached task): asked too
                await connections.agent(vm)
        finally:
            await connections.aclose()

    try:
        asyncio.run(scenario())
    finally:
        shutdown(backend)


def test_the_engine_does_a_local_host_s_work_in_a_process_of_its_own(tmp_path) -> None:
    make_local(tmp_path).close()
    connections = Connections(EngineOptions())
    connections.configure([HostConfig("localhost", "local", f"local://{tmp_path / 'vms'}")])
    backend = connections.driver("localhost").backend
    assert isinstance(backend, LocalProcessBackend)

    async def scenario() -> int:
        try:
            await connections.driver("localhost").revert_and_locate("d1", "clean")
            settings = json.loads((tmp_path / "vms" / "d1" / "agent.json").read_text())
            raw = Path(f"/proc/{settings['sandbox_pid']}/stat").read_bytes()
            assert int(raw[raw.rindex(b")") + 2 :].split()[1]) == backend.pid != os.getpid()
            return backend.pid
        finally:
            await connections.aclose()

    try:
        pid = asyncio.run(scenario())
        assert backend.pid is None and not Path(f"/proc/{pid}/cmdline").exists()  # closed with the engine's
    finally:
        shutdown(make_local(tmp_path))
