"""The engine's connections to the outside: one hypervisor driver per host, one agent client per VM.

Clients are long-lived: a VM keeps its client (and its connection pool) from task to task. When a VM's
agent moves (a local sandbox listens on a new port after each power-on) or a host's configuration
changes, the old client or driver is closed, never leaked.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from testlab.agent.client import AgentClient
from testlab.engine.options import EngineOptions
from testlab.engine.work import VMRef
from testlab.hypervisor import HostConfig, host_driver, open_host
from testlab.hypervisor.base import AgentAddress, Backend, HostUnreachable, OperationFailed
from testlab.hypervisor.driver import HostDriver

log = logging.getLogger("testlab.engine")


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
        self.problems: dict[str, str] = {}  # host -> why it cannot be used as configured
        self._configs: dict[str, HostConfig] = {}
        self._clients: dict[str, tuple[tuple[str, str], AgentClient]] = {}  # VM name -> (url, token), client
        self._answered: dict[str, str] = {}  # VM name -> the boot id its client's agent answered with
        self._closing: set[asyncio.Task] = set()

    def configure(self, hosts: list[HostConfig]) -> None:
        """(Re)build drivers for the lab's hosts; unchanged hosts keep theirs. A host whose settings
        cannot be used (a token file gone) is reported in `problems`, the others carry on."""
        for config in hosts:
            if self._configs.get(config.name) == config and config.name not in self.problems:
                continue
            try:
                token = Path(config.agent_token_file).read_text().strip() if config.agent_token_file else None
                driver = host_driver(_with_faults(open_host(config, own_process=True)))
            except (OSError, ValueError) as error:
                problem = f"host {config.name}: {type(error).__name__}: {error}"
                if self.problems.get(config.name) != problem:
                    log.error("%s", problem)
                self.problems[config.name] = problem
                continue
            self.problems.pop(config.name, None)
            self._close_later(self.drivers.get(config.name))
            self.drivers[config.name] = driver
            self.tokens[config.name] = token
            self._configs[config.name] = config

    def deadline(self, host: str, op: str, default: float) -> float:
        """The host's own deadline for `op` when its lab definition sets one (a physical host's
        30-minute reinstall), else the engine's default."""
        driver = self.drivers.get(host)
        return driver.backend.deadlines().get(op, default) if driver is not None else default

    def driver(self, host: str) -> HostDriver:
        driver = self.drivers.get(host)
        if driver is None:
            raise HostUnreachable(self.problems.get(host, f"host {host} is not configured"), host=host)
        return driver

    async def agent(self, vm: VMRef, url: str | None = None, *, boot_id: str | None = None) -> AgentClient:
        """The agent client of a VM: the backend knows its address (local sandboxes) or the lab file
        names it. One client per VM, replaced (and the old one closed) when the address changes.

        With the `boot_id` of the boot a task was started for: the client whose agent answered with
        that boot id (`answered`) without asking the backend again (a trip to the host's thread at
        every task, for the address the revert just gave). Had the VM booted again since, its agent
        would refuse the task's boot id, or not be there: the task is requeued either way."""
        known = self._clients.get(vm.name)
        if boot_id is not None and known is not None and self._answered.get(vm.name) == boot_id:
            return known[1]
        return self.client(vm, await self.driver(vm.host).agent_address(vm.domain), url)

    def answered(self, vm: VMRef, boot_id: str) -> None:
        """The VM's current client reached its agent, which runs boot `boot_id`."""
        self._answered[vm.name] = boot_id

    def client(self, vm: VMRef, address: AgentAddress | None, url: str | None = None) -> AgentClient:
        """`agent` for an address the backend has just given (None: it knows none, the lab file's
        `url` or the VM's own is used)."""
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
        known = self._clients.get(vm.name)
        if known is not None and known[0] == (url, token):
            return known[1]
        if known is not None:
            self._close_later(known[1])
        self._answered.pop(vm.name, None)
        client = AgentClient(
            url,
            token,
            connect_timeout=5.0,
            request_timeout=30.0,
            retry_deadline=self.options.agent_retry_deadline,
        )
        self._clients[vm.name] = ((url, token), client)
        return client

    def _close_later(self, closable: AgentClient | HostDriver | None) -> None:
        if closable is None:
            return
        task = asyncio.get_running_loop().create_task(closable.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        for driver in self.drivers.values():
            await driver.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._clients.clear()
        self._answered.clear()
        self.drivers.clear()
