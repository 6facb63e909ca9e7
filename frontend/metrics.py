"""Prometheus metrics of a frontend (Triton's names where one exists), kept as plain counters
on the request path and turned into metric families only when scraped."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fabric import errors
from fabric.prom import TritonCounter

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class ModelCounters:
    success: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # by status name
    duration_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))


class RequestMetrics:
    def __init__(self) -> None:
        self.models: dict[str, ModelCounters] = {}

    def observe(self, model: str, status: str, seconds: float) -> None:
        c = self.models.get(model)
        if c is None:
            c = self.models[model] = ModelCounters()
        if status == errors.OK:
            c.success += 1
        else:
            c.failures[status] = c.failures.get(status, 0) + 1
        c.duration_s += seconds
        c.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1


class FrontendCollector(Collector):
    def __init__(
        self,
        metrics: RequestMetrics,
        counters: Callable[[], dict[str, int]],
        gauges: Callable[[], dict[str, float]],
    ) -> None:
        self._metrics = metrics
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        success = TritonCounter(
            "nv_inference_request_success", "Successful inference requests", labels=["model"]
        )
        failure = TritonCounter(
            "nv_inference_request_failure", "Failed inference requests", labels=["model", "code"]
        )
        duration = TritonCounter(
            "nv_inference_request_duration_us", "End-to-end request time, µs", labels=["model"]
        )
        latency = HistogramMetricFamily(
            "fabric_frontend_request_latency_seconds", "End-to-end latency", labels=["model"]
        )
        for model, c in sorted(self._metrics.models.items()):
            success.add_metric([model], c.success)
            for code, n in sorted(c.failures.items()):
                failure.add_metric([model, code], n)
            duration.add_metric([model], c.duration_s * 1e6)
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), c.buckets, strict=True):
                cumulative += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([model], buckets, c.duration_s)
        yield from (success, failure, duration, latency)
        for name, value in sorted(self._counters().items()):
            yield CounterMetricFamily(f"fabric_frontend_{name}", f"Frontend {name}", value=value)
        for gauge, level in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"fabric_frontend_{gauge}", f"Frontend {gauge}", value=level)


def serve_metrics(collector: FrontendCollector, host: str, port: int, *more: Collector) -> None:
    registry = CollectorRegistry()
    registry.register(collector)
    for extra in more:
        registry.register(extra)
    start_http_server(port, addr=host, registry=registry)
