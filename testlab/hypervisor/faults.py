"""Fault injection around any Backend, so tests can prove the engine survives a misbehaving lab.

A `FaultPlan` is a list of rules, each matching calls of one operation (optionally of one domain) and
doing something to the n-th of them: delay it, fail it with a typed error, hang it past any deadline,
power the domain off behind the engine's back, or let a revert "succeed" while breaking the VM. The
plan is plain data (`FaultPlan.from_dict`) because end-to-end tests hand it to an engine running in
another process; with `state_file` set, call counters live in that file so "the 2nd revert" means
the 2nd revert across every process sharing the plan.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from testlab.hypervisor.base import (
    ERRORS_BY_NAME,
    AgentAddress,
    Backend,
    DomainState,
    HostHealth,
)

T = TypeVar("T")

#: Environment variable an engine may read a JSON plan from (see `FaultPlan.from_env`).
ENV_VAR = "TESTLAB_FAULT_PLAN"

OPERATIONS = frozenset(
    {
        "state",
        "power_on",
        "power_off",
        "revert",
        "list_snapshots",
        "create_snapshot",
        "health",
        "power_cycle",
        "agent_address",
        "ensure_domain",
        "*",
    }
)
ACTIONS = frozenset({"delay", "fail", "hang", "power_off", "broken_revert"})
ERRORS = ERRORS_BY_NAME


@dataclass(frozen=True, slots=True)
class FaultRule:
    """What to do to which calls.

    op/domain select calls ("*" any operation, domain None any domain). The rule fires on the `nth`
    selected call (1-based) and the `times - 1` following ones (`times` 0: forever); with `nth` None
    on every selected call. `probability` thins firing out, drawn from the plan's seeded generator.
    Actions: delay (`seconds`, a number or [min, max]) then call; fail (raise `error`); hang (sleep
    `seconds`, default an hour, then call); power_off (power the domain off before the call, or
    after it with `after`); broken_revert (revert, then break the VM: its agent dies, or with
    `mode` "stop" freezes while the domain looks running).
    """

    op: str
    action: str
    domain: str | None = None
    nth: int | None = None
    times: int = 1
    probability: float = 1.0
    error: str = "OperationFailed"
    message: str = "injected fault"
    seconds: float | tuple[float, float] | None = None
    after: bool = False
    mode: str = "kill"

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"fault rule: unknown op {self.op!r} (known: {', '.join(sorted(OPERATIONS))})")
        if self.action not in ACTIONS:
            raise ValueError(
                f"fault rule: unknown action {self.action!r} (known: {', '.join(sorted(ACTIONS))})"
            )
        if self.error not in ERRORS:
            raise ValueError(f"fault rule: unknown error {self.error!r} (known: {', '.join(sorted(ERRORS))})")
        if self.nth is not None and self.nth < 1:
            raise ValueError(f"fault rule: nth counts from 1, got {self.nth}")
        if self.times < 0:
            raise ValueError(f"fault rule: times must be >= 0, got {self.times}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault rule: probability must be within [0, 1], got {self.probability}")
        if self.action == "broken_revert" and self.op not in ("revert", "*"):
            raise ValueError("fault rule: broken_revert applies to op 'revert'")
        if self.mode not in ("kill", "stop"):
            raise ValueError(f"fault rule: mode must be 'kill' or 'stop', got {self.mode!r}")
        if isinstance(self.seconds, (list, tuple)):
            low, high = (float(x) for x in self.seconds)
            if not 0 <= low <= high:
                raise ValueError(
                    f"fault rule: seconds range must be [min, max] with 0 <= min <= max, not {self.seconds}"
                )
            object.__setattr__(self, "seconds", (low, high))
        elif self.seconds is not None and float(self.seconds) < 0:
            raise ValueError(f"fault rule: seconds must be >= 0, got {self.seconds}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        if not isinstance(data, Mapping):
            raise ValueError(f"fault rule must be an object, not {data!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"fault rule: unknown keys {', '.join(unknown)}")
        if "op" not in data or "action" not in data:
            raise ValueError(f"fault rule needs 'op' and 'action': {dict(data)!r}")
        values = dict(data)
        if isinstance(values.get("seconds"), list):
            values["seconds"] = tuple(values["seconds"])
        return cls(**values)

    def selects(self, op: str, domain: str | None) -> bool:
        return self.op in ("*", op) and (self.domain is None or self.domain == domain)

    def fires_at(self, count: int) -> bool:
        if self.nth is None:
            return True
        return count >= self.nth and (self.times == 0 or count < self.nth + self.times)


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    seed: int | None = None
    state_file: str | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> FaultPlan:
        """`{"seed": 1, "state_file": "...", "rules": [{"op": "revert", "nth": 2, "action": "fail"}]}`,
        or just the list of rules."""
        if isinstance(data, Sequence) and not isinstance(data, str):
            data = {"rules": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"fault plan must be an object or a list of rules, not {data!r}")
        unknown = sorted(set(data) - {"rules", "seed", "state_file"})
        if unknown:
            raise ValueError(f"fault plan: unknown keys {', '.join(unknown)}")
        rules = data.get("rules") or []
        if not isinstance(rules, Sequence) or isinstance(rules, str):
            raise ValueError("fault plan: 'rules' must be a list")
        return cls(
            rules=[FaultRule.from_dict(r) for r in rules],
            seed=data.get("seed"),
            state_file=data.get("state_file"),
        )

    @classmethod
    def from_json(cls, text: str) -> FaultPlan:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"fault plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> FaultPlan | None:
        text = os.environ.get(var)
        return cls.from_json(text) if text else None

    def to_dict(self) -> dict[str, Any]:
        rules = []
        for rule in self.rules:
            defaults = FaultRule(op=rule.op, action=rule.action)
            rules.append(
                {
                    name: (list(v) if isinstance(v, tuple) else v)
                    for name in FaultRule.__dataclass_fields__
                    if (v := getattr(rule, name)) != getattr(defaults, name) or name in ("op", "action")
                }
            )
        return {"rules": rules, "seed": self.seed, "state_file": self.state_file}

    def matching(self, op: str, domain: str | None) -> list[FaultRule]:
        """Count this call against every rule selecting it; return the rules that fire on it."""
        selected = [i for i, rule in enumerate(self.rules) if rule.selects(op, domain)]
        if not selected:
            return []
        with self._counters() as counts:
            for i in selected:
                counts[i] = counts.get(i, 0) + 1
            snapshot = {i: counts[i] for i in selected}
        with self._lock:
            return [
                self.rules[i]
                for i in selected
                if self.rules[i].fires_at(snapshot[i])
                and (self.rules[i].probability >= 1.0 or self.rng.random() < self.rules[i].probability)
            ]

    def count(self, index: int) -> int:
        """How many calls rule `index` has selected so far."""
        with self._counters() as counts:
            return counts.get(index, 0)

    @contextlib.contextmanager
    def _counters(self) -> Iterator[dict[int, int]]:
        with self._lock:
            if not self.state_file:
                yield self._counts
                return
            fd = os.open(self.state_file, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                raw = b""
                while chunk := os.read(fd, 65536):
                    raw += chunk
                try:
                    counts = {int(k): int(v) for k, v in json.loads(raw or b"{}").items()}
                except ValueError:
                    counts = {}
                yield counts
                data = json.dumps({str(k): v for k, v in counts.items()}).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
            finally:
                os.close(fd)


class FaultyBackend(Backend):
    """Wraps a Backend and applies a FaultPlan to its calls; the engine cannot tell the difference."""

    def __init__(self, inner: Backend, plan: FaultPlan) -> None:
        # Not Backend.__init__: the inner backend checked the options, and its runner is the one used.
        self.host = inner.host
        self.uri = inner.uri
        self.options = inner.options
        self.timeouts = inner.timeouts
        self.runner = inner.runner
        self.inner = inner
        self.plan = plan
        self.kind = inner.kind

    def deadlines(self) -> dict[str, float]:
        return self.inner.deadlines()

    def _apply(self, op: str, domain: str | None, call: Callable[[], T], snapshot: str | None = None) -> T:
        fired = self.plan.matching(op, domain)
        after: list[FaultRule] = []
        broken: FaultRule | None = None
        for rule in fired:
            if rule.action == "delay":
                time.sleep(self._seconds(rule, 0.0))
            elif rule.action == "hang":
                time.sleep(self._seconds(rule, 3600.0))
            elif rule.action == "fail":
                raise ERRORS[rule.error](
                    f"{rule.message} ({op} of {domain!r})" if domain else f"{rule.message} ({op})",
                    host=self.host,
                    domain=domain,
                )
            elif rule.action == "power_off" and domain is not None:
                if rule.after:
                    after.append(rule)
                else:
                    self.inner.power_off(domain)
            elif rule.action == "broken_revert" and op == "revert":
                broken = rule
        result = call()
        if domain is not None:
            if after:
                self.inner.power_off(domain)
            if broken is not None:
                self.break_domain(domain, broken.mode)
        return result

    def _seconds(self, rule: FaultRule, default: float) -> float:
        if rule.seconds is None:
            return default
        if isinstance(rule.seconds, tuple):
            with self.plan._lock:
                return self.plan.rng.uniform(*rule.seconds)
        return float(rule.seconds)

    # ---- on-demand faults

    def power_off_behind_back(self, domain: str) -> None:
        """Power the domain off without the engine asking, like a crashed guest or an admin."""
        self.inner.power_off(domain)

    def break_domain(self, domain: str, mode: str = "kill") -> None:
        """Leave the domain unusable: its agent dies ("kill") or freezes while it looks running ("stop").

        Backends that know their agent (local) do it precisely; others get a power off."""
        breaker = getattr(self.inner, "break_agent", None)
        if breaker is not None:
            breaker(domain, mode)
        else:
            self.inner.power_off(domain)

    # ---- Backend

    def state(self, domain: str) -> DomainState:
        return self._apply("state", domain, lambda: self.inner.state(domain))

    def power_on(self, domain: str) -> None:
        self._apply("power_on", domain, lambda: self.inner.power_on(domain))

    def power_off(self, domain: str) -> None:
        self._apply("power_off", domain, lambda: self.inner.power_off(domain))

    def revert(self, domain: str, snapshot: str) -> None:
        self._apply("revert", domain, lambda: self.inner.revert(domain, snapshot), snapshot)

    def list_snapshots(self, domain: str) -> list[str]:
        return self._apply("list_snapshots", domain, lambda: self.inner.list_snapshots(domain))

    def create_snapshot(self, domain: str, name: str) -> None:
        self._apply("create_snapshot", domain, lambda: self.inner.create_snapshot(domain, name))

    def health(self) -> HostHealth:
        return self._apply("health", None, self.inner.health)

    def power_cycle(self) -> None:
        self._apply("power_cycle", None, self.inner.power_cycle)

    def agent_address(self, domain: str) -> AgentAddress | None:
        return self._apply("agent_address", domain, lambda: self.inner.agent_address(domain))

    def ensure_domain(self, domain: str, snapshot: str) -> None:
        self._apply("ensure_domain", domain, lambda: self.inner.ensure_domain(domain, snapshot))

    def close(self) -> None:
        self.inner.close()
