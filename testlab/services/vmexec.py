"""`testlab vm exec`: an administrator's command on a VM through its agent, recorded as a use.

A command run outside any job can leave a machine different from what the next task expects, so it
goes into the VM's lifecycle like a task does: the use is recorded (with who ran it and the command
line) before the command starts and closed when it ends, and history strings show it as
`exec#ID`. The command's output is passed on as it comes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from testlab.agent.client import AgentClient, AgentError
from testlab.db.session import run_transaction
from testlab.domain.statuses import VMStatus
from testlab.hypervisor import HostConfig, open_host
from testlab.lifecycle import UseKind
from testlab.services.errors import UserError
from testlab.services.hosts import host_config
from testlab.services.transitions import record_event
from testlab.services.uses import begin_outside_use, end_outside_use
from testlab.services.vms import get_vm
from testlab.threads import call_with_deadline

# A VM in these states has an agent up (or had one, for a dirty VM kept for inspection).
_REACHABLE = (VMStatus.IDLE, VMStatus.RUNNING, VMStatus.SLEEPING, VMStatus.DIRTY, VMStatus.MAINTENANCE)
ADDRESS_TIMEOUT = 60.0
POLL_WAIT = 0.5


@dataclass(frozen=True)
class ExecTarget:
    use_id: int
    vm: str
    url: str
    token: str


def _target(session: Session, name: str, command: str, by: str) -> tuple[int, str, HostConfig, str | None]:
    vm = get_vm(session, name)
    if vm.status not in _REACHABLE:
        raise UserError(
            f"vm {name} is {vm.status}: its agent is not up (exec needs it idle, running or dirty)"
        )
    use_id = begin_outside_use(session, vm, UseKind.EXEC, actor=by, detail=command)
    record_event(session, "vm", f"exec#{use_id} by {by}: {command}", vm=vm)
    return use_id, vm.domain, host_config(vm.host), vm.agent_url


def exec_on_vm(
    url: str,
    name: str,
    command: str,
    *,
    by: str,
    timeout: float,
    output: Callable[[bytes], None] | None = None,
) -> int:
    """Run `command` (a shell line) on the VM's agent, passing its output to `output` as it comes;
    returns its exit code (128 + the signal for a killed command, 124 when it overran `timeout`)."""
    use_id, domain, host, agent_url = run_transaction(
        url, lambda session: _target(session, name, command, by), actor=by
    )
    write = output or _stdout
    try:
        target = _address(use_id, name, domain, host, agent_url)
        return asyncio.run(_run(target, command, timeout, write))
    finally:
        run_transaction(url, lambda session: end_outside_use(session, use_id), actor=by)


def _address(use_id: int, name: str, domain: str, host: HostConfig, agent_url: str | None) -> ExecTarget:
    address = call_with_deadline(
        lambda: open_host(host).agent_address(domain), ADDRESS_TIMEOUT, f"agent address of vm {name}"
    )
    if address is not None:
        return ExecTarget(use_id, name, address.url, address.token)
    token_file = host.agent_token_file
    if not agent_url or not token_file:
        raise UserError(f"vm {name} has no agent address or its host no agent token file")
    try:
        token = Path(token_file).read_text().strip()
    except OSError as error:
        raise UserError(
            f"vm {name}: cannot read the agent token file {token_file}: {error.strerror}"
        ) from None
    return ExecTarget(use_id, name, agent_url, token)


async def _run(target: ExecTarget, command: str, timeout: float, write: Callable[[bytes], None]) -> int:
    client = AgentClient(
        target.url, target.token, connect_timeout=5.0, request_timeout=30.0, retry_deadline=30.0
    )
    command_id = f"exec-{target.use_id}"
    deadline = time.monotonic() + timeout + 60.0  # the agent ends it at `timeout`; this is in case it cannot
    try:
        await client.start(command_id, shell=command, timeout=timeout)
        offset = 0
        while True:
            state = await client.status(command_id, wait=POLL_WAIT)
            data = await client.read_output(command_id, offset)
            while data:
                write(data)
                offset += len(data)
                data = await client.read_output(command_id, offset)
            if state.finished:
                break
            if time.monotonic() > deadline:
                await client.kill(command_id)
                raise UserError(f"vm {target.vm}: the command did not end within {timeout:g} s")
    except AgentError as error:
        raise UserError(f"vm {target.vm}: {error}") from None
    finally:
        await client.aclose()
    if state.state == "timeout":
        return 124
    code = state.exit_code
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
