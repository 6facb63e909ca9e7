"""Prometheus metrics of the broker: queue depth and time queued per model version, workers,
frontends, leases, credit, and its cumulative events as counters; canary releases in
``route_metrics.py``.

The poll loop owns the dispatcher's state, so it copies what is exported into a ``Snapshot``
once per heartbeat tick (``refresh``); a scrape, on the HTTP thread, only reads the latest
snapshot. Nothing is added to the message path but the queue-time observation the dispatcher
makes when it sends a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fabric import prom

from .dispatcher import Dispatcher
from .route_metrics import RouteMetrics

COUNTERS = {
    # Counters field -> (metric name without _total, help)
    "requests": ("fabric_broker_requests", "Requests received from frontends"),
    "replies": ("fabric_broker_replies", "Worker replies passed back to frontends"),
    "rejected_full": ("fabric_broker_rejected", "Requests refused: queue full"),
    "requeued": ("fabric_broker_requeued", "Leased requests sent to another worker after "
                 "their worker was lost"),
    "failed_worker_lost": ("fabric_broker_failed_worker_lost", "Requests failed UNAVAILABLE: "
                           "their worker was lost and none could take them"),
    "dropped_replies": ("fabric_broker_stale_replies", "Replies dropped: no lease, or from a "
                        "worker that no longer held it"),
    "refused_announcements": ("fabric_broker_refused_announcements",
                              "Worker announcements refused whole (over a bound)"),
    "conflicting_versions": ("fabric_broker_conflicting_versions",
                             "Announced versions refused: config differs from the version's"),
}  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    depths: dict[tuple[str, str], int] = field(default_factory=dict)
    queued_bytes: int = 0
    workers: int = 0
    frontends: int = 0
    in_flight: int = 0
    credit: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # expired, cancelled
    answers: dict[str, int] = field(default_factory=dict)  # by status
    queue_wait: list[tuple[tuple[str, str], prom.Buckets]] = field(default_factory=list)


def take_snapshot(d: Dispatcher) -> Snapshot:
    """What the dispatcher exports now; call on the poll loop's thread."""
    credit: dict[str, int] = {}
    depths = d.queues.depths()
    for w in d.registry.workers.values():
        for key in w.versions:  # a served version with nothing queued shows 0, not nothing
            depths.setdefault(key, 0)
        for model in w.capacity:
            credit[model] = credit.get(model, 0) + max(0, w.credit(model))
    c = d.counters
    return Snapshot(
        depths=depths,
        queued_bytes=d.queues.queued_bytes,
        workers=len(d.registry.workers),
        frontends=len(d.frontends),
        in_flight=len(d.leases),
        credit=credit,
        counters={name: getattr(c, name) for name in COUNTERS},
        dropped={"expired": c.expired, "cancelled": c.cancelled},
        answers=dict(c.by_status),
        queue_wait=[(key, b.copy()) for key, b in d.queue_wait.items()],
    )


class BrokerCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()  # replaced whole by the poll loop

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        depth = GaugeMetricFamily(
            "fabric_broker_queue_depth", "Requests waiting for credit", labels=["model", "version"]
        )
        for (model, version), n in sorted(s.depths.items()):
            depth.add_metric([model, version], n)
        yield depth
        yield GaugeMetricFamily(
            "fabric_broker_queued_bytes",
            "Payload bytes waiting for credit (bounded by --max-queued-bytes)",
            value=s.queued_bytes,
        )
        yield prom.histogram(
            "fabric_broker_queue_wait_seconds",
            "Time from a request's arrival to its dispatch to a worker (0 when credit was free)",
            ["model", "version"],
            [([m, v], b) for (m, v), b in sorted(s.queue_wait, key=lambda kv: kv[0])],
        )
        yield GaugeMetricFamily("fabric_broker_workers", "Live workers", value=s.workers)
        yield GaugeMetricFamily(
            "fabric_broker_frontends", "Frontends seen recently", value=s.frontends
        )
        yield GaugeMetricFamily(
            "fabric_broker_in_flight", "Requests leased to workers", value=s.in_flight
        )
        credit = GaugeMetricFamily(
            "fabric_broker_credit", "Free worker credit per model", labels=["model"]
        )
        for model, n in sorted(s.credit.items()):
            credit.add_metric([model], n)
        yield credit
        for key, (name, help_text) in COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=s.counters.get(key, 0))
        dropped = CounterMetricFamily(
            "fabric_broker_dropped",
            "Requests dropped before a worker ran them, by reason (expired: deadline passed; "
            "cancelled: the caller went away)",
            labels=["reason"],
        )
        for reason, n in sorted(s.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        answers = CounterMetricFamily(
            "fabric_broker_answers", "Answers sent to frontends, by status", labels=["status"]
        )
        for status, n in sorted(s.answers.items()):
            answers.add_metric([status], n)
        yield answers


class BrokerMetrics:
    """The broker's registry: the snapshot collector plus the malformed-message counter."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self.registry = CollectorRegistry()
        self.collector = BrokerCollector()
        self.registry.register(self.collector)
        # The same name in every tier (``tier`` label), so one query covers the fabric.
        self.malformed = Counter(
            "fabric_malformed_messages",
            "Messages dropped because they do not follow the fabric protocol, by the message "
            "type they claimed ('envelope': no valid tag or too few frames)",
            ["tier", "reason"],
            registry=self.registry,
        )
        self.routes = RouteMetrics(self.registry, dispatcher.routes)

    def count_malformed(self, reason: str) -> None:
        self.malformed.labels("broker", reason).inc()

    def serve(self, host: str, port: int) -> prom.MetricsEndpoint:
        self.refresh()
        return prom.serve(self.registry, host, port, "broker")

    def refresh(self) -> None:
        self.collector.snapshot = take_snapshot(self._d)
        self.routes.refresh()
