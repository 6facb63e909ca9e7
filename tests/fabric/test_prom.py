"""fabric.prom: bucket counts with Prometheus ``le`` semantics, Triton-named counters, and the
metrics endpoint (any free port when 0, a one-line error when the port is taken)."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fabric.prom import Buckets, MetricsPortError, TritonCounter, histogram, serve


def test_a_value_on_a_bound_falls_in_that_bound_and_cumulative_ends_with_inf() -> None:
    b = Buckets((1, 2, 4))
    for v in (0.5, 1, 2, 3, 100):
        b.observe(v)
    b.observe(2, times=3)  # three batches of 2 rows
    assert b.cumulative() == [("1", 2), ("2", 6), ("4", 7), ("+Inf", 8)]
    assert b.count == 8
    assert b.total == 0.5 + 1 + 2 + 3 + 100 + 6


def test_a_copy_does_not_move_with_the_original() -> None:
    b = Buckets((0.001, 0.01))
    b.observe(0.005)
    snapshot = b.copy()
    b.observe(0.5)
    assert snapshot.cumulative() == [("0.001", 0), ("0.01", 1), ("+Inf", 1)]
    assert b.count == 2


def test_histogram_and_triton_counter_expose_as_prometheus_reads_them() -> None:
    b = Buckets((1.0,))
    b.observe(0.25)
    counter = TritonCounter("nv_inference_count", "rows", ["model", "version"])
    counter.add_metric(["m", "1"], 7)

    class Two:
        def collect(self):  # type: ignore[no-untyped-def]
            yield histogram("lat_seconds", "latency", ["model"], [(["m"], b)])
            yield counter

    registry = CollectorRegistry()
    registry.register(Two())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'lat_seconds_bucket{le="1",model="m"} 1.0' in text
    assert 'lat_seconds_count{model="m"} 1.0' in text
    assert 'lat_seconds_sum{model="m"} 0.25' in text
    assert 'nv_inference_count{model="m",version="1"} 7.0' in text  # no _total suffix


def test_port_zero_serves_on_a_free_port_and_says_which() -> None:
    registry = CollectorRegistry()
    endpoint = serve(registry, "127.0.0.1", 0, "test")
    try:
        assert endpoint.port > 0
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
    finally:
        endpoint.close()


def test_a_taken_port_is_a_metrics_port_error_naming_the_way_out() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"127.0.0.1:{port}.*--no-metrics"):
            serve(CollectorRegistry(), "127.0.0.1", port, "test")
