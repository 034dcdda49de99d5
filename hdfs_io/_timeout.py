"""Bounded remote calls.

hdfs-native retries forever against a dead NameNode and the AWS SDK's own limits do not cover every
stall, so each remote call runs on a daemon worker thread and the caller waits at most the configured
timeout. A call that overruns is abandoned (its thread stays parked in the client library, using no
CPU) and the caller gets :class:`StorageTimeoutError`. Workers are daemon threads on purpose: a
``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit, so one stuck call
would hang the process at shutdown.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from typing import Any, Callable, TypeVar

from .errors import StorageTimeoutError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "HDFS_IO_TIMEOUT_S"


def timeout_s() -> float:
    """The timeout for one remote call: ``$HDFS_IO_TIMEOUT_S`` (seconds), default 30."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {raw!r}")
    return value


class _DaemonPool:
    """A grow-on-demand pool of daemon threads. Idle workers are reused; none is ever joined."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._tasks.put((fut, fn, args))
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # reserve an idle worker: it is blocked in get() and takes this task
                return fut
            self._count += 1
            n = self._count
        threading.Thread(target=self._work, name=f"hdfs_io-call-{n}", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            fut, fn, args = self._tasks.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
            del fut, fn, args
            with self._lock:
                self._idle += 1


_POOL = _DaemonPool()


def _after_fork_in_child() -> None:
    # The parent's worker threads do not exist in a forked child (Spark/TFoS fork Python workers):
    # start from an empty pool, or tasks would wait for workers the child does not have.
    global _POOL
    _POOL = _DaemonPool()


os.register_at_fork(after_in_child=_after_fork_in_child)


# S3 transfers run inside the AWS SDK, whose stall detection is coarse (measured: about 7 s past its
# low-speed window per attempt, 3 attempts). As a backstop each S3 transfer also runs on a timed thread
# with a budget of the timeout plus its bytes at this minimum rate.
MIN_TRANSFER_RATE = 1 << 20  # bytes/s


def transfer_budget(nbytes: int) -> float:
    """Seconds allowed for moving ``nbytes``: the timeout plus the bytes at MIN_TRANSFER_RATE."""
    return timeout_s() + max(0, nbytes) / MIN_TRANSFER_RATE


def call(uri: str, operation: str, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    """Run ``fn(*args)`` on a worker thread; raise :class:`StorageTimeoutError` after ``timeout`` s."""
    limit = timeout_s() if timeout is None else timeout
    fut = _POOL.submit(fn, *args)
    try:
        return fut.result(timeout=limit)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise StorageTimeoutError(uri, limit, operation) from None
