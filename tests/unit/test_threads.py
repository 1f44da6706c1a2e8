"""The pools' threads carry their names into the kernel, where `top -H` and the benchmarks read them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from testlab.threads import DaemonThreadPool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc: Linux")


def _kernel_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_pool_worker_has_its_name_in_the_kernel() -> None:
    pool = DaemonThreadPool(1, "testlab-db")
    try:
        assert pool.submit(_kernel_name).result(timeout=5) == "testlab-db-0"
    finally:
        pool.shutdown()


def test_a_long_name_is_cut_to_what_the_kernel_keeps() -> None:
    pool = DaemonThreadPool(1, "host-a-very-long-host-name")
    try:
        assert pool.submit(_kernel_name).result(timeout=5) == "host-a-very-lon"
    finally:
        pool.shutdown()
