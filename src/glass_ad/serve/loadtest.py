"""A bounded load generator for a running `glass serve` (used by the tests and benchmarks/serve_load.py).

It sends exactly `requests` inspections from `concurrency` client threads, each with its own HTTP
connection, to one service URL, and reports throughput and latency percentiles. Every request carries a
unique file name (``<tag>-<n>.png``) so that the caller can check the log holds one row per answer.
Meant for services on this machine (loopback addresses).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    ids: list[int] = field(repr=False)  # inspection ids of the answered requests
    errors: list[str] = field(default_factory=list)
    batch_mean: float | None = None  # mean network batch size seen by the service (from /metrics)

    @property
    def ok(self) -> int:
        return len(self.ids)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> str:
        line = (
            f"{self.ok}/{self.requests} ok from {self.concurrency} clients in {self.seconds:.1f} s: "
            f"{self.throughput:.1f} req/s, p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms"
        )
        if self.batch_mean is not None:
            line += f", mean batch {self.batch_mean:.2f}"
        if self.errors:
            line += f"; {len(self.errors)} errors (first: {self.errors[0]})"
        return line


def _batch_stats(client, base: str) -> tuple[float, float]:
    """(sum, count) of the service's glass_batch_size histogram over all models."""
    text = client.get(f"{base}/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("glass_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("glass_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def run_load(
    base_url: str,
    model: str,
    images: Sequence[bytes],
    *,
    requests: int = 2000,
    concurrency: int = 8,
    token: str | None = None,
    tag: str = "load",
    timeout_s: float = 60.0,
) -> LoadResult:
    """Send `requests` raw-bytes inspections (cycling through `images`) from `concurrency` threads."""
    import httpx

    if not images:
        raise ValueError("give at least one image")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = base_url.rstrip("/")
    url = f"{base}/v1/models/{model}/inspect"
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    ids: list[int] = []
    errors: list[str] = []

    def next_index() -> int | None:
        with lock:
            return next(counter, None)

    def client_loop() -> None:
        with httpx.Client(headers=headers, timeout=timeout_s) as client:
            while (index := next_index()) is not None:
                body = images[index % len(images)]
                start = time.perf_counter()
                try:
                    response = client.post(
                        url,
                        content=body,
                        params={"filename": f"{tag}-{index}.png"},
                        headers={"Content-Type": "image/png"},
                    )
                    elapsed = (time.perf_counter() - start) * 1000.0
                    if response.status_code == 200:
                        with lock:
                            latencies.append(elapsed)
                            ids.append(int(response.json()["id"]))
                    else:
                        with lock:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")

    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        before = _batch_stats(client, base)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(client_loop) for _ in range(concurrency)]:
                future.result()
        seconds = time.perf_counter() - start
        after = _batch_stats(client, base)
    batches = after[1] - before[1]
    mean = (after[0] - before[0]) / batches if batches > 0 else None
    return LoadResult(requests, concurrency, seconds, latencies, ids, errors, mean)
