"""Threads for blocking calls that may hang: bounded, and never a reason for the process to stay alive.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, so one hung
hypervisor call or power-cycle command keeps a stopped engine or a finished CLI command waiting for
as long as the call hangs: its deadline would not be real. These pools use daemon threads instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

PR_SET_NAME = 15
OS_NAME_LIMIT = 15  # bytes the kernel keeps of a thread's name


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel too (Linux), so that `top -H`, `ps -L` and
    /proc/PID/task/TID/comm tell an engine's database thread from its planner or a host's workers."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # a name for operators only: never a failure
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:OS_NAME_LIMIT], 0, 0, 0)


class DaemonThreadPool(concurrent.futures.Executor):
    """A bounded pool of daemon threads, started on demand. A hung call occupies one thread for as long
    as it hangs; the pool never grows past `max_workers`, and the process exits without waiting for it."""

    def __init__(self, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._worker, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _worker(self) -> None:
        name_os_thread(threading.current_thread().name)
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as error:  # noqa: BLE001 - handed to the caller through the future
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


def call_with_deadline(function: Callable[[], T], timeout: float, name: str) -> T:
    """Run a blocking call in a daemon thread and wait at most `timeout` seconds for it.

    Raises TimeoutError when it overruns; the call goes on in the background but never delays exit."""
    pool = DaemonThreadPool(1, name)
    try:
        return pool.submit(function).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{name} did not finish within {timeout:g} s") from None
    finally:
        pool.shutdown(wait=False)
