"""The libvirt backend on a real QEMU guest, called the way the engine calls it (HostDriver, deadlines):
revert to a running snapshot with memory, a fresh agent after every revert, nothing a task left behind
surviving a revert, power-off through ACPI, and destroy when the guest ignores ACPI."""

from __future__ import annotations

import asyncio
import time

import pytest

from testlab.agent.client import AgentClient
from testlab.hypervisor import HostDriver, open_backend
from testlab.hypervisor.base import DomainState
from tests.realvm.conftest import HOST, RealLab
from tests.realvm.host import URI

pytestmark = [pytest.mark.realvm, pytest.mark.slow]


async def _run(agent: AgentClient, command_id: str, shell: str) -> tuple[int | None, str]:
    started = await agent.start(command_id, shell=shell, timeout=60)
    state = await agent.wait(started.id, boot_id=started.boot_id)
    return state.exit_code, (await agent.read_output(started.id)).decode()


def test_reverts_bring_back_a_clean_guest_with_a_fresh_agent(real_lab: RealLab) -> None:
    async def scenario() -> None:
        token = (real_lab.image / "agent.token").read_text().strip()
        backend = open_backend("libvirt", HOST, URI, {"shutdown_grace": 30})
        async with HostDriver(backend) as driver:
            agent = AgentClient(
                real_lab.agent_url, token, connect_timeout=5, request_timeout=30, retry_deadline=30
            )
            try:
                assert await driver.state(real_lab.domain) == DomainState.OFF
                boots, randoms = [], []
                for n in range(3):
                    await driver.revert(real_lab.domain, "clean-a")
                    assert await driver.state(real_lab.domain) == DomainState.RUNNING
                    info = await agent.wait_until_up(timeout=60, not_boot_id=boots[-1] if boots else None)
                    boots.append(info.boot_id)
                    code, out = await _run(
                        agent,
                        f"check-{n}",
                        "ls -A /var/tmp; ls -A .; date +%s; head -c 16 /dev/urandom | od -An -tx1",
                    )
                    *listings, clock, random = out.strip().split("\n")
                    assert code == 0
                    kept = [name for name in listings if name in ("leftover", "uploaded")]
                    assert not kept, f"revert {n} kept what the previous task left: {kept}"
                    assert abs(int(clock) - time.time()) < 10, "the guest clock is the snapshot's, not now"
                    randoms.append(random)
                    await agent.upload_bytes(b"from the host\n", "uploaded/leftover.txt")
                    code, _ = await _run(agent, f"dirty-{n}", "echo task > /var/tmp/leftover && sync")
                    assert code == 0
                assert len(set(boots)) == 3, "every revert must start a new agent"
                assert len(set(randoms)) == 3, "every revert must reseed the guest's random numbers"

                started = time.monotonic()
                await driver.power_off(real_lab.domain)
                assert await driver.state(real_lab.domain) == DomainState.OFF
                assert time.monotonic() - started < 25, "the guest should power itself off on ACPI"
            finally:
                await agent.aclose()
                await driver.power_off(real_lab.domain)

    asyncio.run(asyncio.wait_for(scenario(), 300))


def test_a_guest_that_ignores_acpi_is_destroyed_after_the_grace(real_lab: RealLab) -> None:
    async def scenario() -> None:
        token = (real_lab.image / "agent.token").read_text().strip()
        backend = open_backend("libvirt", HOST, URI, {"shutdown_grace": 3})
        async with HostDriver(backend) as driver:
            agent = AgentClient(
                real_lab.agent_url, token, connect_timeout=5, request_timeout=30, retry_deadline=30
            )
            try:
                await driver.revert(real_lab.domain, "clean-b")
                await agent.wait_until_up(timeout=60)
                code, _ = await _run(agent, "deaf", "mv /etc/acpi/PWRF /etc/acpi/PWRF.ignored")
                assert code == 0
                started = time.monotonic()
                await driver.power_off(real_lab.domain)
                elapsed = time.monotonic() - started
                assert await driver.state(real_lab.domain) == DomainState.OFF
                assert 3 <= elapsed < 20, elapsed
            finally:
                await agent.aclose()
                await driver.power_off(real_lab.domain)

    asyncio.run(asyncio.wait_for(scenario(), 300))
