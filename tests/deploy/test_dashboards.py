"""The provisioned Grafana dashboard (deploy/grafana/): every panel's query names metrics the
tiers really export, as their collectors write them after some traffic (the exposition names,
``_total``/``_bucket`` suffixes included). The routing metrics are a declared list until the
routing tier exports them. Also the worker's GPU series, from a fake NVML."""

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
from worker.gpu_metrics import GpuProbe
from worker.metrics import WorkerCollector
from worker.stats import ModelStats

from ..broker.test_dispatcher import W1, Harness

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fabricserve.json"

ROUTING_METRICS = {
    "fabricserve_route_calls_total",
    "fabricserve_route_errors_total",
    "fabricserve_route_weight",
    "fabricserve_route_rollout_step",
    "fabricserve_route_rollbacks_total",
    "fabricserve_route_shadow_total",
}
"""Declared, not yet exported: the routing work names them so (labels route, target, reason,
outcome); this list goes once a collector exports them."""
METRIC = re.compile(r"\b(?:nv|fabric|fabricserve)_[a-z_]+\b")


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
    text = generate_latest(registry).decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def frontend_names() -> set[str]:
    metrics = RequestMetrics()
    metrics.observe("m", "1", errors.OK, 0.01)
    metrics.observe("m", "1", errors.UNAVAILABLE, 0.02)
    collector = FrontendCollector(
        metrics,
        lambda: {"retries": 1, "hedges": 0, "rejected": 0},
        lambda: {"in_flight": 0, "brokers_live": 1, "workers": 1},
    )
    return sample_names(exposition(collector))


def broker_names() -> set[str]:
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 1))
    h.reply(W1, h.request())
    metrics.count_malformed("envelope")
    metrics.refresh()
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def gpu_probe() -> GpuProbe:
    return GpuProbe(FakeNvml(), handle=object(), uuid="GPU-1234")


def worker_names() -> set[str]:
    stats = ModelStats()
    stats.record_batch(2, 3, 0.001, 0.0001, 0.002, 0.0001, 0.004)
    models = SimpleNamespace(
        served={("m", "1"): SimpleNamespace(stats=stats, pending=0)},
        load_errors={"broken:1": "bad file"},
    )
    return sample_names(exposition(WorkerCollector(models, gpu_probe())))  # type: ignore[arg-type]


def sample_names(families: dict[str, tuple[str, list[Any]]]) -> set[str]:
    return {s.name for _, samples in families.values() for s in samples}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return frontend_names() | broker_names() | worker_names()


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


def test_every_panel_queries_only_metrics_the_tiers_export(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    known = exported | ROUTING_METRICS
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        named = {m for t in panel["targets"] for m in METRIC.findall(t["expr"])}
        assert named, f"panel {panel['title']!r} names no metric"
        assert named <= known, f"panel {panel['title']!r}: not exported: {named - known}"


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
        "fabricserve_route_calls_total",
    ):
        assert needed in exprs, needed
    assert "by (le, model, version)" in exprs  # latency per model and version


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
