"""Prometheus metrics of a frontend (Triton's names where one exists), kept as plain counters
on the request path and turned into metric families only when scraped.

Per model and version (labels ``model``, ``version``): Triton's success and failure counts
(failures also by gRPC status, label ``code``) and cumulative request time, and a latency
histogram. ``version`` is the one the call named (``<unknown>`` when the catalog does not
have it) or, when it named none, the version the brokers serve by default (the latest one a
live worker serves), as the catalog shows it.
Calls for models no broker announced share the model label ``<unknown>``, so client-chosen
names cannot grow the label set. Retries, hedges and admission rejections are counters;
requests in flight, live brokers and workers are gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fabric import errors, prom
from fabric.prom import LATENCY_BUCKETS_S, TritonCounter
from fabric.versions import version_sort_key

ModelKey = tuple[str, str]  # (model, version)
COUNTER_HELP = {
    "retries": "Attempts sent again after a retryable failure",
    "hedges": "Hedged copies sent (a second attempt while the first is still running)",
    "rejected": "Calls refused by admission control (--max-in-flight reached)",
    "rejected_bytes": "Calls refused by admission control (--max-in-flight-bytes reached)",
}


@dataclass
class ModelCounters:
    success: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # by status name
    latency: prom.Buckets = field(default_factory=lambda: prom.Buckets(LATENCY_BUCKETS_S))


class RequestMetrics:
    def __init__(self) -> None:
        self.models: dict[ModelKey, ModelCounters] = {}

    def observe(self, model: str, version: str, status: str, seconds: float) -> None:
        c = self.models.get((model, version))
        if c is None:
            c = self.models[(model, version)] = ModelCounters()
        if status == errors.OK:
            c.success += 1
        else:
            c.failures[status] = c.failures.get(status, 0) + 1
        c.latency.observe(seconds)


UNKNOWN_VERSION_LABEL = "<unknown>"


class VersionLabels:
    """The ``version`` label of a call, from the catalog: the version it named when the catalog
    has it (any other name shares ``<unknown>``: clients must not grow the label set), else
    the version the brokers serve by default."""

    def __init__(self, catalog: Mapping[ModelKey, tuple[object, int]]) -> None:
        self._known = frozenset(catalog)
        self._default = default_versions(catalog)

    def label(self, model: str, version: str) -> str:
        if not version:
            return self._default.get(model, "")
        return version if (model, version) in self._known else UNKNOWN_VERSION_LABEL


def default_versions(catalog: Mapping[ModelKey, tuple[object, int]]) -> dict[str, str]:
    """Per model, the version a call that names none is served by: the latest one some live
    worker serves, else the latest known (as the broker resolves it)."""
    best: dict[str, tuple[bool, str]] = {}
    for (name, version), (_, workers) in catalog.items():
        mine = (workers > 0, version)
        have = best.get(name)
        if have is None or (mine[0], version_sort_key(version)) > (
            have[0],
            version_sort_key(have[1]),
        ):
            best[name] = mine
    return {name: version for name, (_, version) in best.items()}


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
        labels = ["model", "version"]
        success = TritonCounter(
            "nv_inference_request_success", "Successful inference requests", labels
        )
        failure = TritonCounter(
            "nv_inference_request_failure", "Failed inference requests", [*labels, "code"]
        )
        duration = TritonCounter(
            "nv_inference_request_duration_us", "End-to-end request time, µs", labels
        )
        series: list[tuple[list[str], prom.Buckets]] = []
        for (model, version), c in sorted(list(self._metrics.models.items())):
            key = [model, version]
            success.add_metric(key, c.success)
            for code, n in sorted(list(c.failures.items())):
                failure.add_metric([*key, code], n)
            duration.add_metric(key, c.latency.total * 1e6)
            series.append((key, c.latency))
        latency = prom.histogram(
            "fabric_frontend_request_latency_seconds", "End-to-end latency", labels, series
        )
        yield from (success, failure, duration, latency)
        for name, value in sorted(self._counters().items()):
            doc = COUNTER_HELP.get(name, f"Frontend {name}")
            yield CounterMetricFamily(f"fabric_frontend_{name}", doc, value=value)
        for gauge, level in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"fabric_frontend_{gauge}", f"Frontend {gauge}", value=level)


def serve_metrics(
    collector: FrontendCollector, host: str, port: int, *more: Collector
) -> prom.MetricsEndpoint:
    registry = CollectorRegistry()
    registry.register(collector)
    for extra in more:  # the routing table's metrics (frontend.routing.metrics)
        registry.register(extra)
    return prom.serve(registry, host, port, "frontend")
