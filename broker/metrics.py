"""Prometheus metrics of the broker: queue depth, workers, credit, requeues, drops, refused
announcements and malformed messages; canary releases in ``route_metrics.py``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .dispatcher import Dispatcher
from .route_metrics import RouteMetrics


class BrokerMetrics:
    """Gauges refreshed from the dispatcher's state once per heartbeat tick (no hot-path cost)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "fabric_broker_queue_depth",
            "Requests waiting for credit",
            ["model", "version"],
            registry=r,
        )
        self.workers = Gauge("fabric_broker_workers", "Live workers", registry=r)
        self.frontends = Gauge("fabric_broker_frontends", "Frontends seen recently", registry=r)
        self.in_flight = Gauge("fabric_broker_in_flight", "Requests leased to workers", registry=r)
        self.credit = Gauge(
            "fabric_broker_credit", "Free worker credit per model", ["model"], registry=r
        )
        self.totals = Gauge(
            "fabric_broker_events", "Cumulative broker events by kind", ["event"], registry=r
        )
        # The same name in every tier (``tier`` label), so one query covers the fabric.
        self.malformed = Counter(
            "fabric_malformed_messages",
            "Messages dropped because they do not follow the fabric protocol, by the message "
            "type they claimed ('envelope': no valid tag or too few frames)",
            ["tier", "reason"],
            registry=r,
        )
        self.routes = RouteMetrics(r, dispatcher.routes)

    def count_malformed(self, reason: str) -> None:
        self.malformed.labels("broker", reason).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def refresh(self) -> None:
        d = self._d
        self.queue_depth.clear()
        for (model, version), depth in d.queues.depths().items():
            self.queue_depth.labels(model, version).set(depth)
        self.workers.set(len(d.registry.workers))
        self.frontends.set(len(d.frontends))
        self.in_flight.set(len(d.leases))
        credit: dict[str, int] = {}
        for w in d.registry.workers.values():
            for model in w.capacity:
                credit[model] = credit.get(model, 0) + max(0, w.credit(model))
        self.credit.clear()
        for model, c in credit.items():
            self.credit.labels(model).set(c)
        self.routes.refresh()
        counters = d.counters
        for name in (
            "requests",
            "replies",
            "rejected_full",
            "expired",
            "cancelled",
            "requeued",
            "failed_worker_lost",
            "dropped_replies",
            "refused_announcements",
            "conflicting_versions",
        ):
            self.totals.labels(name).set(getattr(counters, name))
