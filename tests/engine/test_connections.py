"""The engine's agent clients: a task started for the boot a revert just met uses that boot's client
without asking the backend where its agent listens again."""

from __future__ import annotations

import asyncio

import pytest

from testlab.engine.connections import Connections
from testlab.engine.options import EngineOptions
from testlab.engine.work import VMRef
from testlab.hypervisor import FaultPlan, FaultyBackend, host_driver
from testlab.hypervisor.base import HostUnreachable
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
