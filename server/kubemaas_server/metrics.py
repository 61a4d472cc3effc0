"""Prometheus metrics of the model server, served on `--metrics-port` at `/metrics` by
`kubemaas_server.http_endpoints`.

The names are a contract: the operator's concurrency autoscaler reads
`kubemaas_inflight_requests`, and docs/server.md lists every metric. Each server instance owns a
`CollectorRegistry`, so several servers (tests) can live in one process.

Histogram buckets are chosen for this server's range: latencies from 100 µs to 10 s, batch sizes
as powers of two up to 1024.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

UNKNOWN_MODEL = "_unknown"  # label for requests naming no model we serve, to bound label cardinality


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The label children of one model, resolved once so the hot path skips label lookups."""

    inflight: Any
    request_duration: Any
    queue_duration: Any
    compute_duration: Any
    batch_size: Any
    success: Any


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "kubemaas_requests",
            "ModelInfer requests by model and outcome (success, the gRPC status name in lower case, "
            "or queue_full / queue_timeout for requests the model's queue shed)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "kubemaas_request_duration_seconds",
            "ModelInfer latency inside the server, from decoded request to encoded response",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "kubemaas_queue_duration_seconds",
            "Time a request waited in its model's batch queue before its forward pass started",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_duration = Histogram(
            "kubemaas_compute_duration_seconds",
            "Duration of one batched forward pass, conversions included",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kubemaas_batch_size",
            "Rows per forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "kubemaas_inflight_requests",
            "ModelInfer requests received and not yet answered, per model (the autoscaler's signal)",
            ["model"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "kubemaas_model_ready",
            "1 when the model is loaded and serving, 0 otherwise",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[str, ModelMetrics] = {}
        self._lock = threading.Lock()

    def for_model(self, model: str) -> ModelMetrics:
        children = self._children.get(model)
        if children is None:
            with self._lock:
                children = self._children.get(model)
                if children is None:
                    children = ModelMetrics(
                        inflight=self.inflight.labels(model=model),
                        request_duration=self.request_duration.labels(model=model),
                        queue_duration=self.queue_duration.labels(model=model),
                        compute_duration=self.compute_duration.labels(model=model),
                        batch_size=self.batch_size.labels(model=model),
                        success=self.requests.labels(model=model, outcome="success"),
                    )
                    self._children[model] = children
        return children

    def count_failure(self, model: str, outcome: str) -> None:
        self.requests.labels(model=model, outcome=outcome).inc()
