"""Prometheus metrics of one service (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServiceMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "glass_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "glass_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "glass_inspections", "Images inspected, by model and decision", ["model", "decision"], registry=self.registry
        )
        self.rejected = Counter(
            "glass_rejected_images", "Uploads refused (unreadable, too large)", ["model", "reason"], registry=self.registry
        )
        self.batch_size = Histogram(
            "glass_batch_size",
            "Images per network pass",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "glass_batch_duration_seconds", "Time of one network pass", ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.log_rows = Histogram(
            "glass_log_commit_rows", "Inspection rows per database transaction", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )  # fmt: skip
        self.ready = Gauge("glass_ready", "1 when every model is loaded", registry=self.registry)
        self.models_loaded = Gauge("glass_models_loaded", "Models loaded", registry=self.registry)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
