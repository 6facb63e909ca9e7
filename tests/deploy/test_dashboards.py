"""The provisioned Grafana dashboard (deploy/grafana/): every panel's query names metrics the
tiers really export, as their collectors write them after some traffic (the exposition names,
``_total``/``_bucket`` suffixes included), routing's among them (the frontends' routing
collector and the brokers' canary decisions); every label a query groups by or selects on is
one those series carry. Also the worker's GPU series, from a fake NVML."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import BrokerMetrics
from fabric import errors
from frontend.metrics import FrontendCollector, RequestMetrics
from frontend.routing.config import parse_routing
from frontend.routing.metrics import RoutingCollector
from frontend.routing.router import Router
from worker.gpu_metrics import GpuProbe
from worker.metrics import WorkerCollector
from worker.stats import ModelStats

from ..broker.test_dispatcher import FE, W1, Harness
from ..broker.test_route_decider import CANARY, STABLE, spec
from ..frontend.routing.test_shadow import HeldClient

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fabricserve.json"

METRIC = re.compile(r"\b(?:nv|fabric|fabricserve)_[a-z_0-9]+\b")
SELECTOR = re.compile(r"\b((?:nv|fabric|fabricserve)_[a-z_0-9]+)(?:\{([^}]*)\})?")
SELECTOR_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!=|!~|=)")
BY = re.compile(r"\bby \(([^)]*)\)")


class FakeNvml:
    """The pynvml calls GpuProbe makes, with fixed answers."""

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Any:
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> Any:
        return SimpleNamespace(total=80 * 2**30, used=2**30)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return 250_000  # mW


def exposition(*collectors: Any) -> dict[str, tuple[str, list[Any]]]:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return families(generate_latest(registry).decode())


def families(text: str) -> dict[str, tuple[str, list[Any]]]:
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


Labels = dict[str, set[str]]
"""Sample name -> the label names its samples carry."""


def frontend_names() -> Labels:
    metrics = RequestMetrics()
    metrics.observe("m", "1", errors.OK, 0.01)
    metrics.observe("m", "1", errors.UNAVAILABLE, 0.02)
    collector = FrontendCollector(
        metrics,
        lambda: {"retries": 1, "hedges": 0, "rejected": 0},
        lambda: {"in_flight": 0, "brokers_live": 1, "workers": 1},
    )
    return sample_labels(exposition(collector))


ROUTING = b"""
routes:
  clf:
    targets:
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
    rollout: {steps: [10, 50], dwell_s: 5}
"""


def routing_names() -> Labels:
    """The frontend's routing collector after calls, a failure, shadow results, a rollback
    and reloads."""
    router = Router(parse_routing(ROUTING), HeldClient(), lambda: 0.0, 30.0)
    m = router.metrics
    m.observe(m.target("clf", "clf", "1"), errors.OK, 0.002)
    m.observe(m.target("clf", "clf", "2"), errors.UNAVAILABLE, 0.2)
    m.target("clf", "clf", "2").shadow["mismatch"] += 1
    m.rolled_back("clf", "error_rate")
    m.reloads += 1
    m.reload_errors += 1
    return sample_labels(exposition(RoutingCollector(m, lambda: router.routes)))


def broker_names() -> Labels:
    """Broker counters after one reply, and the canary metrics after a route's canary is
    rolled back for its errors."""
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 1))
    h.reply(W1, h.request())
    metrics.count_malformed("envelope")
    decider = h.d.routes
    decider.report(FE, [spec(steps=[20, 100], dwell_s=100.0)])
    for rid, (key, failed) in enumerate([(STABLE, False)] * 100 + [(CANARY, True)] * 100):
        decider.start((FE, rid), key)
        h.clocks.advance(0.01)
        decider.finish((FE, rid), errors.INTERNAL if failed else errors.OK)
    decider.tick()
    metrics.refresh()
    text = generate_latest(metrics.registry).decode()
    return sample_labels(families(text))


def gpu_probe() -> GpuProbe:
    return GpuProbe(FakeNvml(), handle=object(), uuid="GPU-1234")


def worker_names() -> Labels:
    stats = ModelStats()
    stats.record_batch(2, 3, 0.001, 0.0001, 0.002, 0.0001, 0.004)
    models = SimpleNamespace(
        served={("m", "1"): SimpleNamespace(stats=stats, pending=0)},
        load_errors={"broken:1": "bad file"},
    )
    return sample_labels(exposition(WorkerCollector(models, gpu_probe())))  # type: ignore[arg-type]


def sample_labels(fams: dict[str, tuple[str, list[Any]]]) -> Labels:
    out: Labels = {}
    for _, samples in fams.values():
        for s in samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


@pytest.fixture(scope="module")
def exported() -> Labels:
    out: Labels = {}
    for tier in (frontend_names(), routing_names(), broker_names(), worker_names()):
        for name, labels in tier.items():
            out.setdefault(name, set()).update(labels)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in dashboard["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def test_the_routing_and_canary_series_are_exported(exported: Labels) -> None:
    target = {"route", "model", "version"}
    for name, labels in {
        "fabric_route_calls_total": target,
        "fabric_route_errors_total": target | {"code"},
        "fabric_route_latency_seconds_bucket": target | {"le"},
        "fabric_route_shadow_total": target | {"result"},
        "fabric_route_weight": target,
        "fabric_route_rollout_step": {"route"},
        "fabric_route_rolled_back": {"route"},
        "fabric_route_rollbacks_total": {"route", "reason"},
        "fabric_broker_route_weight": target,
        "fabric_broker_route_rollbacks_total": target | {"reason"},
        "fabric_broker_route_window_error_rate": target,
        "fabric_broker_route_window_p99_seconds": target,
    }.items():
        assert exported.get(name) == labels, name


def test_every_panel_queries_only_metrics_the_tiers_export(
    dashboard: dict[str, Any], exported: Labels
) -> None:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        named = {m for t in panel["targets"] for m in METRIC.findall(t["expr"])}
        assert named, f"panel {panel['title']!r} names no metric"
        assert named <= exported.keys(), (
            f"panel {panel['title']!r}: not exported: {named - set(exported)}"
        )


def test_every_label_a_query_uses_is_on_its_series(
    dashboard: dict[str, Any], exported: Labels
) -> None:
    """A selector's labels are on its metric; a ``by`` clause's are on a metric of the query
    (``job`` is Prometheus's own)."""
    for title, expr in queries(dashboard):
        carried: set[str] = {"job"}
        for name, selector in SELECTOR.findall(expr):
            have = exported.get(name, set()) | {"job"}
            used = set(SELECTOR_LABEL.findall(selector))
            assert used <= have, f"{title!r}: {name} has no {used - have}"
            carried |= have
        for clause in BY.findall(expr):
            grouped = {label.strip() for label in clause.split(",")}
            assert grouped <= carried, f"{title!r}: no series carries {grouped - carried}"


def test_the_dashboard_covers_what_operators_ask_for(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(e for _, e in queries(dashboard))
    for needed in (
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "nv_inference_request_failure",
        "fabric_broker_queue_depth",
        "fabric_worker_batch_size_bucket",
        "fabric_broker_workers",
        "fabric_frontend_retries_total",
        "fabric_frontend_hedges_total",
        "fabric_route_calls_total",
        "fabric_route_errors_total",
        "fabric_route_weight",
        "fabric_route_rollout_step",
        "fabric_route_rolled_back",
        "fabric_broker_route_rollbacks_total",
        "fabric_route_shadow_total",
    ):
        assert needed in exprs, needed
    assert "by (le, model, version)" in exprs  # latency per model and version
    assert "by (le, route, model, version)" in exprs  # p99 per route target
    assert "by (route, model, version, reason)" in exprs  # rollbacks by reason
    assert "by (route, model, version, result)" in exprs  # shadow results


def test_panels_use_the_provisioned_datasource_and_do_not_overlap(
    dashboard: dict[str, Any],
) -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid, p["title"]
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_gpu_series_use_tritons_names_and_units() -> None:
    families = exposition(WorkerCollector(None, gpu_probe()))
    got = {f"{name}": samples[0].value for name, (_, samples) in families.items()}
    assert got == {
        "nv_gpu_utilization": 0.37,
        "nv_gpu_memory_total_bytes": 80 * 2**30,
        "nv_gpu_memory_used_bytes": 2**30,
        "nv_gpu_power_usage": 250.0,
    }
    assert all(s.labels == {"gpu_uuid": "GPU-1234"} for _, ss in families.values() for s in ss)


def test_no_gpu_probe_on_a_cpu_device() -> None:
    assert GpuProbe.open("cpu") is None


def test_gpu_uuids_match_across_nvml_and_torch_spellings() -> None:
    from worker.gpu_metrics import _same_uuid

    nvml = "GPU-8c6b2a1e-0f3d-4c2b-9a7e-5d1f2e3c4b5a"
    assert _same_uuid(nvml, "8c6b2a1e-0f3d-4c2b-9a7e-5d1f2e3c4b5a")
    assert _same_uuid(nvml, "8C6B2A1E0F3D4C2B9A7E5D1F2E3C4B5A")
    assert not _same_uuid(nvml, "GPU-00000000-0f3d-4c2b-9a7e-5d1f2e3c4b5a")
