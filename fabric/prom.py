"""Prometheus plumbing every tier shares: counter families that keep Triton's exact names, a
histogram kept as plain integers on the request path, and the metrics HTTP endpoint.

Samples of ``TritonCounter`` keep Triton's names (``nv_inference_count``, not
``nv_inference_count_total`` as prometheus_client would write), so Triton dashboards work.
``Buckets`` costs one bisect and one increment per observation and becomes a histogram family
only when scraped. ``serve`` starts the endpoint: port 0 takes any free port, and the port in
use is logged either way, so a replica started by hand says where its metrics are.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Request latency buckets (seconds) of every tier's latency histograms."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Batch size buckets (rows per executed batch)."""
QUEUE_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                        1.0, 2.0, 5.0, 10.0)  # fmt: skip
"""Time queued (seconds): finer at the bottom, where a request that found credit lands."""


class TritonCounter(Metric):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._label_names = list(labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._label_names, labels, strict=True)), value)


class Buckets:
    """Counts of observations per bucket (``le`` semantics: a value equal to a bound falls in
    that bound's bucket), their sum, and nothing else. Written by one thread; a scrape reads
    whole ints, so it sees a consistent-enough snapshot without a lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def copy(self) -> Buckets:
        out = Buckets(self.bounds)
        out.counts = list(self.counts)
        out.total = self.total
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs as HistogramMetricFamily takes them, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else _le(bound), running))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else str(bound)


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str],
    series: Iterable[tuple[Sequence[str], Buckets]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, b in series:
        family.add_metric(list(values), b.cumulative(), b.total)
    return family


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running metrics endpoint; ``port`` is the one bound (useful when 0 was asked)."""

    host: str
    port: int
    server: WSGIServer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetricsPortError(OSError):
    """The metrics port cannot be bound: the tier says so in one line and exits."""


def serve(
    collector: Collector | CollectorRegistry, host: str, port: int, tier: str
) -> MetricsEndpoint:
    """Serve ``collector`` (or a whole registry) at ``http://host:port/metrics`` from a daemon
    thread; port 0 = any free port. Raises ``MetricsPortError`` when the port is taken."""
    if isinstance(collector, CollectorRegistry):
        registry = collector
    else:
        registry = CollectorRegistry()
        registry.register(collector)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another "
            "--metrics-port, 0 for any free port, or --no-metrics"
        ) from exc
    bound = int(server.server_port)
    logger.info("%s metrics on http://%s:%d/metrics", tier, host, bound)
    return MetricsEndpoint(host, bound, server)
