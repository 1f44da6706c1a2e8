"""The engine's own measurements, in Prometheus form (prometheus-client's default registry).

They live in the engine's process: `testlab serve --engine` shows them at `/metrics` next to what the
web server reads from the database; an engine run on its own shows them with `testlab engine
--metrics-port PORT`. Updating one is a few hundred nanoseconds and takes no lock the engine waits on.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROUND_SECONDS = Histogram(
    "testlab_scheduler_round_seconds",
    "Duration of one engine round: read the snapshot, plan, record the plan.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OPERATION_SECONDS = Histogram(
    "testlab_operation_seconds",
    "Duration of the engine's operations on VMs, by kind (revert, power_off, task, monitor).",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
OPERATION_ERRORS = Counter(
    "testlab_operation_errors",
    "Infrastructure errors met by the engine's operations, by operation and error class.",
    ["kind", "error"],
)
AGENT_RECONNECTS = Counter(
    "testlab_agent_reconnects",
    "Agent requests that failed in transport and were retried (the client reconnects by itself).",
)


def operation_failed(kind: str, error: BaseException) -> None:
    OPERATION_ERRORS.labels(kind=kind, error=type(error).__name__).inc()
