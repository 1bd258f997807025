"""Micro-batching: one worker thread turns items submitted concurrently into batches.

The service uses it twice: to score prepared images of concurrent requests in one network pass (one
batcher per model), and to write inspection rows of concurrent requests in one database transaction
(group commit). A caller submits one item and waits for its own result; the worker takes the first
waiting item, then keeps collecting until the batch holds `max_batch` items or `max_wait_s` has passed,
and runs `process` on the list. While a batch runs, new requests queue up and form the next batch, so
under load batches fill by themselves and at low load a request waits at most `max_wait_s`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["BatcherClosed", "MicroBatcher"]


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item could be processed."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: Future


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Batch items submitted from any thread or event loop; `process(items) -> results` (same order, same
    length) runs on the worker thread. An exception from `process` is given to every caller of that batch.
    `on_batch(size, seconds)` is called after each batch (metrics)."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.process = process
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.name = name
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> "Future[R]":
        """Queue one item; the future resolves to its result."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            self._queue.put(_Job(item, future))
        return future

    async def run(self, item: T) -> R:
        """Submit from an event loop and wait without blocking it."""
        return await asyncio.wrap_future(self.submit(item))

    def close(self, timeout: float | None = 30.0) -> None:
        """Process what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ worker

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stop = True
                break
            batch.append(job)
        return batch, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            # A caller that gave up (cancelled future) before its batch started is dropped.
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)
            if stop:
                break
        # Anything left after the stop marker (submitted concurrently with close) is refused, not lost silently.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed(f"{self.name} is closed"))

    def _run(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = list(self.process([job.item for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: process returned {len(results)} results for {len(batch)} items")
        except BaseException as error:  # noqa: BLE001 - every caller must hear about the failure
            log.exception("%s: batch of %d failed", self.name, len(batch))
            for job in batch:
                job.future.set_exception(error)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), time.perf_counter() - start)
            except Exception:  # pragma: no cover - metrics must never break serving
                log.exception("%s: on_batch failed", self.name)
