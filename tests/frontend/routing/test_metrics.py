"""Routing's Prometheus families: per route and target, with the weight and step in force."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from fabric import errors
from frontend.routing.config import parse_routing
from frontend.routing.metrics import RoutingCollector
from frontend.routing.router import Router

from .test_shadow import HeldClient

FILE = b"""
routes:
  clf:
    targets:
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
    rollout: {steps: [10, 50], dwell_s: 5}
"""


def test_scrape_names_route_target_weight_step_shadow_and_reloads() -> None:
    router = Router(parse_routing(FILE), HeldClient(), lambda: 0.0, 30.0)
    m = router.metrics
    m.observe(m.target("clf", "clf", "2"), errors.OK, 0.003)
    m.observe(m.target("clf", "clf", "2"), errors.UNAVAILABLE, 0.2)
    m.target("clf", "nxt", "1").shadow["mismatch"] += 3
    m.rolled_back("clf", "p99 ratio 3.1 > 2.0")
    m.reload_errors += 1
    registry = CollectorRegistry()
    registry.register(RoutingCollector(m, lambda: router.routes))
    text = generate_latest(registry).decode()
    for line in (
        'fabric_route_calls_total{model="clf",route="clf",version="2"} 2.0',
        'fabric_route_errors_total{code="UNAVAILABLE",model="clf",route="clf",version="2"} 1.0',
        'fabric_route_latency_seconds_bucket{le="0.005",model="clf",route="clf",version="2"} 1.0',
        'fabric_route_shadow_total{model="nxt",result="mismatch",route="clf",version="1"} 3.0',
        'fabric_route_weight{model="clf",route="clf",version="1"} 90.0',
        'fabric_route_weight{model="clf",route="clf",version="2"} 10.0',
        'fabric_route_rollout_step{route="clf"} 0.0',
        'fabric_route_rolled_back{route="clf"} 0.0',
        'fabric_route_rollbacks_total{reason="p99 ratio 3.1 > 2.0",route="clf"} 1.0',
        "fabric_routing_reload_errors_total 1.0",
        "fabric_routing_reloads_total 0.0",
    ):
        assert line in text, line
