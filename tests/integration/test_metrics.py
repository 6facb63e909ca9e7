"""Prometheus endpoints of every tier, scraped from real processes after real traffic."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .stack import Stack, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; labels not named may have any value (their sum)."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
            found = True
    assert found, f"no sample {name}{labels} in:\n{text[:2000]}"
    return total


def test_every_tier_reports_the_traffic_it_saw(make_stack: Callable[[], Stack]) -> None:
    broker_port, worker_port, frontend_port = free_port(), free_port(), free_port()
    stack = make_stack()
    stack.start_broker(extra_args=["--metrics-port", str(broker_port)])
    stack.start_worker(extra_args=["--metrics-port", str(worker_port)])
    frontend = stack.start_frontend(extra_args=["--metrics-port", str(frontend_port)])
    stack.wait_live()
    stack.wait_ready(["simple"])
    client = stack.client(frontend)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    inputs = [grpcclient.InferInput("INPUT0", [2, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [2, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    for _ in range(5):
        client.infer("simple", inputs)
    with pytest.raises(grpcclient.InferenceServerException):
        client.infer("simple", inputs[:1])  # missing INPUT1

    fe = scrape(frontend_port)
    assert value(fe, "nv_inference_request_success", model="simple") == 5
    assert value(fe, "nv_inference_request_failure", model="simple", code="INVALID_ARGUMENT") == 1
    assert value(fe, "fabric_frontend_request_latency_seconds_count", model="simple") == 6
    assert value(fe, "fabric_frontend_workers") == 1

    wk = scrape(worker_port)
    assert value(wk, "nv_inference_request_success", model="simple", version="1") == 5
    assert value(wk, "nv_inference_count", model="simple", version="1") == 10  # rows
    assert value(wk, "nv_inference_exec_count", model="simple", version="1") >= 1
    assert value(wk, "nv_inference_compute_infer_duration_us", model="simple") > 0

    # Broker gauges refresh once per heartbeat tick.
    wait_for(
        lambda: value(scrape(broker_port), "fabric_broker_events", event="replies") >= 6,
        timeout_s=10,
        what="broker counted the replies",
        watch=stack.procs,
    )
    br = scrape(broker_port)
    assert value(br, "fabric_broker_workers") == 1
    assert value(br, "fabric_broker_in_flight") == 0
