"""Prometheus metrics of routing, per route and target: calls, errors, latency, the weight
and rollout step in force, shadow outcomes, rollbacks with their reason, and file reloads.
Plain counters on the request path, metric families only when scraped."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fabric import errors

from ..metrics import LATENCY_BUCKETS_S

if TYPE_CHECKING:  # table.py holds counters of this module
    from .table import RouteState

SHADOW_RESULTS = ("match", "mismatch", "error", "drop")
TargetLabel = tuple[str, str, str]  # route, model, version


@dataclass
class TargetCounters:
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by status name
    duration_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    shadow: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHADOW_RESULTS, 0))


class RoutingMetrics:
    def __init__(self) -> None:
        self.targets: dict[TargetLabel, TargetCounters] = {}
        self.rollbacks: dict[tuple[str, str], int] = {}  # (route, reason) -> times seen
        self.reloads = 0
        self.reload_errors = 0

    def target(self, route: str, model: str, version: str) -> TargetCounters:
        key = (route, model, version)
        c = self.targets.get(key)
        if c is None:
            c = self.targets[key] = TargetCounters()
        return c

    def observe(self, c: TargetCounters, status: str, seconds: float) -> None:
        c.calls += 1
        if status != errors.OK:
            c.errors[status] = c.errors.get(status, 0) + 1
        c.duration_s += seconds
        c.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def rolled_back(self, route: str, reason: str) -> None:
        self.rollbacks[(route, reason)] = self.rollbacks.get((route, reason), 0) + 1


class RoutingCollector(Collector):
    def __init__(
        self, metrics: RoutingMetrics, routes: Callable[[], dict[str, RouteState]]
    ) -> None:
        self._metrics = metrics
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        labels = ["route", "model", "version"]
        calls = CounterMetricFamily("fabric_route_calls", "Calls routed to a target", labels=labels)
        failed = CounterMetricFamily(
            "fabric_route_errors", "Routed calls that failed", labels=[*labels, "code"]
        )
        latency = HistogramMetricFamily(
            "fabric_route_latency_seconds", "Latency of routed calls", labels=labels
        )
        shadow = CounterMetricFamily(
            "fabric_route_shadow",
            "Shadow copies by result (match, mismatch, error, drop)",
            labels=[*labels, "result"],
        )
        for (route, model, version), c in sorted(m.targets.items()):
            key = [route, model, version]
            calls.add_metric(key, c.calls)
            for code, n in sorted(c.errors.items()):
                failed.add_metric([*key, code], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), c.buckets, strict=True):
                cumulative += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric(key, buckets, c.duration_s)
            for result, n in c.shadow.items():
                shadow.add_metric([*key, result], n)
        weight = GaugeMetricFamily(
            "fabric_route_weight", "Weight in force, percent of the route's calls", labels=labels
        )
        step = GaugeMetricFamily(
            "fabric_route_rollout_step", "Rollout step index in force, -1 = none", labels=["route"]
        )
        down = GaugeMetricFamily(
            "fabric_route_rolled_back", "1 while the canary is rolled back", labels=["route"]
        )
        for name, state in sorted(self._routes().items()):
            for (model, version), w in zip(state.targets, state.weights, strict=True):
                weight.add_metric([name, model, version], w)
            step.add_metric([name], state.step)
            down.add_metric([name], int(state.rolled_back))
        rollbacks = CounterMetricFamily(
            "fabric_route_rollbacks", "Rollbacks seen, by reason", labels=["route", "reason"]
        )
        for (route, reason), n in sorted(m.rollbacks.items()):
            rollbacks.add_metric([route, reason], n)
        yield from (calls, failed, latency, shadow, weight, step, down, rollbacks)
        yield CounterMetricFamily(
            "fabric_routing_reloads", "Routing file edits put in force", value=m.reloads
        )
        yield CounterMetricFamily(
            "fabric_routing_reload_errors", "Routing file edits refused", value=m.reload_errors
        )
