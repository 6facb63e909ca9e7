"""The frontend's request metrics: labels model and version, failures by status, latency
histogram and Triton's cumulative request time agreeing, and the default version label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from fabric import errors
from frontend.metrics import FrontendCollector, RequestMetrics, VersionLabels, default_versions


def test_default_version_is_the_latest_a_live_worker_serves() -> None:
    catalog = {
        ("m", "1"): (None, 2),
        ("m", "10"): (None, 1),
        ("m", "11"): (None, 0),  # announced once, no live worker now
        ("gone", "3"): (None, 0),
        ("gone", "2"): (None, 0),
    }
    assert default_versions(catalog) == {"m": "10", "gone": "3"}


def test_series_per_model_and_version_with_failures_by_status() -> None:
    metrics = RequestMetrics()
    metrics.observe("m", "1", errors.OK, 0.004)
    metrics.observe("m", "1", errors.OK, 0.3)
    metrics.observe("m", "2", errors.UNAVAILABLE, 0.001)
    registry = CollectorRegistry()
    registry.register(
        FrontendCollector(metrics, lambda: {"retries": 3}, lambda: {"in_flight": 1.0})
    )
    text = generate_latest(registry).decode()
    for line in (
        'nv_inference_request_success{model="m",version="1"} 2.0',
        'nv_inference_request_failure{code="UNAVAILABLE",model="m",version="2"} 1.0',
        'nv_inference_request_duration_us{model="m",version="1"} 304000.0',
        'fabric_frontend_request_latency_seconds_bucket{le="0.005",model="m",version="1"} 1.0',
        'fabric_frontend_request_latency_seconds_bucket{le="0.5",model="m",version="1"} 2.0',
        'fabric_frontend_request_latency_seconds_count{model="m",version="2"} 1.0',
        "fabric_frontend_retries_total 3.0",
        "fabric_frontend_in_flight 1.0",
    ):
        assert line in text, line


def test_a_version_the_catalog_lacks_shares_one_label() -> None:
    labels = VersionLabels({("m", "1"): (None, 1), ("m", "2"): (None, 1)})
    assert labels.label("m", "") == "2"
    assert labels.label("m", "1") == "1"
    assert labels.label("m", "999") == "<unknown>"
    assert labels.label("m", "x" * 200) == "<unknown>"
