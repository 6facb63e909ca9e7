"""Prometheus metrics of canary releases as this broker decides them, per route and target:
current weight, rollout step, rollback state, rollbacks by reason, and the window each rule
reads (requests, error rate, p99). Refreshed once per heartbeat tick from ``RouteDecider``.

When two digests of one route are live (frontends between two versions of the file), the
metrics show the one this broker heard of last.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from fabric.routes import effective_weights

from .route_decider import RollbackKey, RouteDecider, RouteState

_TARGET = ["route", "model", "version"]


class RouteMetrics:
    def __init__(self, registry: CollectorRegistry, decider: RouteDecider) -> None:
        self._decider = decider
        r = registry
        self.weight = Gauge(
            "fabric_broker_route_weight",
            "Current weight of a route's target (the canary's: its rollout step, 0 after a "
            "rollback; during a rollout, weights are percentages)",
            _TARGET,
            registry=r,
        )
        self.step = Gauge(
            "fabric_broker_route_rollout_step",
            "Index into the route's rollout steps (-1: no rollout)",
            ["route"],
            registry=r,
        )
        self.rolled_back = Gauge(
            "fabric_broker_route_rolled_back",
            "1 while the route's canary is rolled back (until the route changes)",
            ["route"],
            registry=r,
        )
        self.rollbacks = Counter(
            "fabric_broker_route_rollbacks",
            "Canaries rolled back, by the rule that fired (error_rate, p99_latency)",
            [*_TARGET, "reason"],
            registry=r,
        )
        self.requests = Gauge(
            "fabric_broker_route_window_requests",
            "Counted outcomes of the target in the route's rollback window",
            _TARGET,
            registry=r,
        )
        self.error_rate = Gauge(
            "fabric_broker_route_window_error_rate",
            "Error rate of the target in the route's rollback window",
            _TARGET,
            registry=r,
        )
        self.p99 = Gauge(
            "fabric_broker_route_window_p99_seconds",
            "p99 latency (admission to reply) of the target's successes in the window",
            _TARGET,
            registry=r,
        )
        self._counted: dict[RollbackKey, int] = {}

    def refresh(self) -> None:
        d = self._decider
        for key, total in d.rollbacks.items():
            new = total - self._counted.get(key, 0)
            if new > 0:
                self.rollbacks.labels(key.route, key.model, key.version, key.reason).inc(new)
                self._counted[key] = total
        newest: dict[str, RouteState] = {}
        for state in d.routes.values():
            prev = newest.get(state.spec.route)
            if prev is None or state.epoch >= prev.epoch:
                newest[state.spec.route] = state
        for gauge in (
            self.weight,
            self.step,
            self.rolled_back,
            self.requests,
            self.error_rate,
            self.p99,
        ):
            gauge.clear()
        for route, state in newest.items():
            decision = state.decision()
            self.step.labels(route).set(decision.step)
            self.rolled_back.labels(route).set(1 if decision.rolled_back else 0)
            spec = state.spec
            weights = effective_weights(spec, decision)
            for target, weight in zip(spec.targets, weights, strict=True):
                self.weight.labels(route, target.model, target.version).set(weight)
            for target, stats in zip(spec.targets, d.target_stats(spec), strict=True):
                labels = (route, target.model, target.version)
                self.requests.labels(*labels).set(stats.count)
                self.error_rate.labels(*labels).set(stats.error_rate)
                self.p99.labels(*labels).set(stats.p99_s)
