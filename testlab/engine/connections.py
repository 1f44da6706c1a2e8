"""The engine's connections to the outside: one hypervisor driver per host, one agent client per agent."""

from __future__ import annotations

import json
from pathlib import Path

from testlab.agent.client import AgentClient
from testlab.engine.options import EngineOptions
from testlab.engine.work import VMRef
from testlab.hypervisor import open_backend
from testlab.hypervisor.base import Backend, OperationFailed
from testlab.hypervisor.driver import HostDriver


def _with_faults(backend: Backend) -> Backend:
    """Tests run the engine with a fault plan (JSON in TESTLAB_FAULT_PLAN); never set in production."""
    from testlab.hypervisor.faults import FaultPlan, FaultyBackend

    plan = FaultPlan.from_env()
    return backend if plan is None else FaultyBackend(backend, plan)


class Connections:
    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.drivers: dict[str, HostDriver] = {}
        self.tokens: dict[str, str | None] = {}
        self._clients: dict[tuple[str, str], AgentClient] = {}
        self._keys: dict[str, tuple] = {}

    def configure(self, hosts: list[tuple[str, str, str, dict, str | None]]) -> None:
        """(Re)build drivers for the lab's hosts; unchanged hosts keep theirs."""
        for name, backend, uri, commands, token_file in hosts:
            key = (backend, uri, json.dumps(commands, sort_keys=True))
            if self._keys.get(name) == key:
                continue
            self.drivers[name] = HostDriver(
                _with_faults(open_backend(backend, name, uri, {"commands": commands}))
            )
            self._keys[name] = key
            self.tokens[name] = Path(token_file).read_text().strip() if token_file else None

    def driver(self, host: str) -> HostDriver:
        return self.drivers[host]

    async def agent(self, vm: VMRef, url: str | None = None) -> AgentClient:
        """The agent client of a VM: the backend knows it (local sandboxes) or the lab file names it."""
        address = await self.driver(vm.host).agent_address(vm.domain)
        if address is not None:
            url, token = address.url, address.token
        else:
            url = url or vm.agent_url
            token = self.tokens.get(vm.host)
            if not url or token is None:
                raise OperationFailed(
                    f"vm {vm.name} has no agent address or its host no agent token",
                    host=vm.host,
                    domain=vm.domain,
                )
        key = (url, token)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = AgentClient(
                url,
                token,
                connect_timeout=5.0,
                request_timeout=30.0,
                retry_deadline=self.options.agent_retry_deadline,
            )
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        for driver in self.drivers.values():
            await driver.aclose()
