"""Micro-batching: concurrent requests for one model are joined into one model call.

A batch closes at ``max_batch_size`` instances or ``batch_timeout_ms`` after its first request; it
runs on a thread (the event loop never waits on TensorFlow) with the version its requests were
checked and encoded for (requests for two versions, around a swap, never share a batch); at most ``batch_threads`` run at once, and while they do, new requests queue up and form
the next, larger batch. A request is never split: one larger than ``max_batch_size`` runs alone.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tfos_jobs.serving.config import BatchingConfig


class Overloaded(Exception):
    """More instances are queued than the server accepts: the client should retry later."""


@dataclass
class _Pending:
    version: Any
    columns: dict
    rows: int
    future: asyncio.Future
    arrived: float


class Batcher:
    """Joins the requests of one model. ``run(version, columns)`` is the model call; ``observe(rows)``
    is told each batch's size."""

    def __init__(self, config: BatchingConfig, run: Callable[[Any, dict], dict],
                 observe: Callable[[int], None] = lambda rows: None):
        self.config, self.run, self.observe = config, run, observe
        self.queue: collections.deque[_Pending] = collections.deque()
        self.queued = 0
        self.executor = ThreadPoolExecutor(config.batch_threads, thread_name_prefix="tfos-batch")
        self._slots = asyncio.Semaphore(config.batch_threads)
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tfos-batcher")

    async def stop(self) -> None:
        """After the queued and running batches are done."""
        while self.queue or self._running:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, version: Any, columns: dict[str, np.ndarray], rows: int) -> dict:
        """The outputs of ``version`` for these rows, when their batch has run."""
        if self.queued + rows > self.config.max_queued:
            raise Overloaded(f"{self.queued} instances queued, the limit is {self.config.max_queued}")
        pending = _Pending(version, columns, rows, asyncio.get_running_loop().create_future(), time.monotonic())
        self.queue.append(pending)
        self.queued += rows
        self._arrived.set()
        return await pending.future

    async def _loop(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self.queue:
                await self._slots.acquire()
                await self._fill()
                batch = self._take()
                task = asyncio.create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _fill(self) -> None:
        """Wait until the head of the queue has company enough or has waited its timeout."""
        deadline = self.queue[0].arrived + self.config.batch_timeout_ms / 1000.0
        while self.queued < self.config.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch = [self.queue.popleft()]
        rows = batch[0].rows
        while (self.queue and self.queue[0].version is batch[0].version
               and rows + self.queue[0].rows <= self.config.max_batch_size):
            rows += self.queue[0].rows
            batch.append(self.queue.popleft())
        self.queued -= rows
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            version = batch[0].version
            names = list(batch[0].columns)
            columns = {name: np.concatenate([p.columns[name] for p in batch]) if len(batch) > 1
                       else batch[0].columns[name] for name in names}
            rows = sum(p.rows for p in batch)
            self.observe(rows)
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, version, columns)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result({k: v[start:start + p.rows] for k, v in outputs.items()})
                start += p.rows
        except Exception as exc:   # noqa: BLE001 - every waiting request learns of it
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._slots.release()
