"""The service's Prometheus metrics (``GET /metrics``): requests by route and status, latency,
batch sizes, requests in flight, and the model being served.

With several worker processes, each writes its figures to files in a folder the parent made
(prometheus-client's multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR``), so that a scrape
answered by any worker reports them all.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The metrics of one app; ``exposition()`` is the body of ``GET /metrics``."""

    def __init__(self, model: dict[str, str]):
        self.shared = bool(os.environ.get(MULTIPROCESS_DIR))
        # one registry per app in a single process (several apps may live in one test process);
        # in multiprocess mode the figures go to files and a registry is made per scrape
        registry = None if self.shared else CollectorRegistry()
        self.registry = registry
        self.requests = Counter(
            "mnist_cnn_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mnist_cnn_request_duration_seconds",
            "Time from the request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "mnist_cnn_batch_size",
            "Images per forward pass of the model",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mnist_cnn_requests_in_flight",
            "Requests being answered now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        info = Gauge(
            "mnist_cnn_model_info",
            "The model being served (always 1)",
            list(model),
            registry=registry,
            multiprocess_mode="max",
        )
        info.labels(**model).set(1)

    def exposition(self) -> tuple[bytes, str]:
        registry = self.registry
        if registry is None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
