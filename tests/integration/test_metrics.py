"""Prometheus endpoints of every tier, scraped from real processes before and after known
traffic: each series must move by exactly what that traffic implies."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .helpers import expect_error, rand_int32, simple_inputs
from .stack import Proc, Stack, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def parse(text: str) -> Samples:
    out: Samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text: str | Samples, name: str, **labels: str) -> float:
    """The sum of samples ``name`` whose labels include ``labels``; fails when there is none."""
    samples = parse(text) if isinstance(text, str) else text
    want = set(labels.items())
    found = [v for (n, have), v in samples.items() if n == name and want <= have]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a series moved; a series absent before counts from 0."""
    want = set(labels.items())
    prior = [v for (n, have), v in before.items() if n == name and want <= have]
    return value(after, name, **labels) - sum(prior)


def metrics_port_of(proc: Proc) -> int:
    """The port a process logged for its metrics (started without --metrics-port: any free)."""
    found: list[int] = []

    def logged() -> bool:
        found[:] = [int(p) for p in re.findall(r"metrics on http://[\d.]+:(\d+)/metrics",
                                               proc.log_text())]  # fmt: skip
        return bool(found)

    wait_for(logged, timeout_s=60, what=f"{proc.name} logged its metrics port", watch=[proc])
    return found[-1]


def test_every_tier_counts_known_traffic_exactly(make_stack: Callable[[], Stack]) -> None:
    worker_port, frontend_port, limited_port = free_port(), free_port(), free_port()
    stack = make_stack()
    broker = stack.start_broker()  # no --metrics-port: on by default, on a free port, logged
    stack.start_worker(extra_args=["--metrics-port", str(worker_port)])
    frontend = stack.start_frontend(extra_args=["--metrics-port", str(frontend_port)])
    limited = stack.start_frontend(
        extra_args=["--metrics-port", str(limited_port), "--max-in-flight", "0"]
    )
    stack.wait_live()
    stack.wait_ready(["simple", "faulty"])
    broker_port = metrics_port_of(broker)
    wait_for(
        lambda: value(scrape(broker_port), "fabric_broker_workers") == 1,
        timeout_s=10,
        what="broker metrics show the worker",
        watch=stack.procs,
    )
    fe0, wk0, br0 = (parse(scrape(p)) for p in (frontend_port, worker_port, broker_port))
    lim0 = parse(scrape(limited_port))

    client = stack.client(frontend)
    rng = np.random.default_rng(0)
    for _ in range(5):  # one after another: 5 batches of 2 rows
        a, b = rand_int32(rng, 2), rand_int32(rng, 2)
        client.infer("simple", simple_inputs(a, b), model_version="1")
    client.infer("simple", simple_inputs(rand_int32(rng, 3), rand_int32(rng, 3)))  # 3 rows
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(a, b)[:1])
    x = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    x.set_data_from_numpy(np.array([[1, -2, 3, 4]], dtype=np.int32))
    expect_error("INTERNAL", client.infer, "faulty", [x])  # the model raises
    expect_error("NOT_FOUND", client.infer, "no_such_model", simple_inputs(a, b))
    for _ in range(2):
        expect_error(
            "RESOURCE_EXHAUSTED", stack.client(limited).infer, "simple", simple_inputs(a, b)
        )

    fe = parse(scrape(frontend_port))
    simple = {"model": "simple", "version": "1"}
    assert moved(fe0, fe, "nv_inference_request_success", **simple) == 6
    assert moved(fe0, fe, "nv_inference_request_failure", **simple, code="INVALID_ARGUMENT") == 1
    assert moved(fe0, fe, "nv_inference_request_failure", model="faulty", code="INTERNAL") == 1
    assert moved(fe0, fe, "nv_inference_request_failure", model="<unknown>", code="NOT_FOUND") == 1
    assert moved(fe0, fe, "fabric_frontend_request_latency_seconds_count", **simple) == 7
    assert (
        moved(fe0, fe, "fabric_frontend_request_latency_seconds_bucket", **simple, le="+Inf") == 7
    )
    request_us = moved(fe0, fe, "nv_inference_request_duration_us", **simple)
    latency_s = moved(fe0, fe, "fabric_frontend_request_latency_seconds_sum", **simple)
    assert request_us > 0 and request_us == pytest.approx(latency_s * 1e6)
    for counter in ("retries", "hedges", "rejected"):
        assert moved(fe0, fe, f"fabric_frontend_{counter}_total") == 0
    assert value(fe, "fabric_frontend_in_flight") == 0
    assert value(fe, "fabric_frontend_workers") == 1

    lim = parse(scrape(limited_port))
    assert moved(lim0, lim, "fabric_frontend_rejected_total") == 2
    assert (
        moved(lim0, lim, "nv_inference_request_failure", **simple, code="RESOURCE_EXHAUSTED") == 2
    )

    wk = parse(scrape(worker_port))
    assert moved(wk0, wk, "nv_inference_request_success", **simple) == 6
    # Refused while decoding (INPUT1 missing): it never reached the model, whose statistics
    # these are; the frontend and the broker count it.
    assert moved(wk0, wk, "nv_inference_request_failure", **simple) == 0
    assert moved(wk0, wk, "nv_inference_count", **simple) == 13  # rows
    assert moved(wk0, wk, "nv_inference_exec_count", **simple) == 6
    assert moved(wk0, wk, "fabric_worker_batch_size_count", **simple) == 6
    assert moved(wk0, wk, "fabric_worker_batch_size_sum", **simple) == 13
    assert moved(wk0, wk, "fabric_worker_batch_size_bucket", **simple, le="1") == 0
    assert moved(wk0, wk, "fabric_worker_batch_size_bucket", **simple, le="2") == 5
    assert moved(wk0, wk, "fabric_worker_batch_size_bucket", **simple, le="4") == 6
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert moved(wk0, wk, f"nv_inference_{stage}_duration_us", **simple) > 0, stage
    assert moved(wk0, wk, "nv_inference_request_failure", model="faulty", version="1") == 1
    assert moved(wk0, wk, "nv_inference_request_success", model="faulty", version="1") == 0
    assert value(wk, "nv_inference_pending_request_count", **simple) == 0
    assert value(wk, "fabric_worker_model_ready", **simple) == 1
    assert moved(wk0, wk, "fabric_worker_requests_dropped_total", **simple) == 0
    assert not any(name.startswith("nv_gpu_") for name, _ in wk)  # a CPU worker

    # The broker exports a snapshot taken once per heartbeat tick: wait for one taken after
    # the last call reached it (one snapshot is one instant of the broker's loop).
    def broker_saw_all() -> bool:
        return moved(br0, parse(scrape(broker_port)), "fabric_broker_requests_total") >= 9

    wait_for(broker_saw_all, timeout_s=10, what="broker counted the replies", watch=stack.procs)
    br = parse(scrape(broker_port))
    # The unknown model's call reaches the broker, which answers NOT_FOUND itself; the two
    # calls refused by admission never leave their frontend.
    assert moved(br0, br, "fabric_broker_requests_total") == 9
    assert moved(br0, br, "fabric_broker_replies_total") == 8  # from the worker
    assert moved(br0, br, "fabric_broker_answers_total", status="OK") == 6
    assert moved(br0, br, "fabric_broker_answers_total", status="INVALID_ARGUMENT") == 1
    assert moved(br0, br, "fabric_broker_answers_total", status="INTERNAL") == 1
    assert moved(br0, br, "fabric_broker_answers_total", status="NOT_FOUND") == 1
    assert moved(br0, br, "fabric_broker_queue_wait_seconds_count", **simple) == 7
    assert moved(br0, br, "fabric_broker_queue_wait_seconds_count", model="faulty") == 1
    for counter in ("rejected", "requeued", "failed_worker_lost", "stale_replies"):
        assert moved(br0, br, f"fabric_broker_{counter}_total") == 0, counter
    assert moved(br0, br, "fabric_broker_dropped_total") == 0
    assert value(br, "fabric_broker_queue_depth", **simple) == 0
    assert value(br, "fabric_broker_in_flight") == 0
    assert value(br, "fabric_broker_workers") == 1
    assert value(br, "fabric_broker_credit", model="simple") > 0


def test_no_metrics_serves_none_and_a_taken_port_is_one_line(
    make_stack: Callable[[], Stack],
) -> None:
    stack = make_stack()
    broker = stack.start_broker(extra_args=["--no-metrics"])
    anywhere = ["--frontend-bind", "tcp://127.0.0.1:0", "--worker-bind", "tcp://127.0.0.1:0"]
    taken = metrics_port_of(stack.start_broker(extra_args=anywhere))
    clash = stack._spawn("broker", ["-m", "broker", *anywhere, "--metrics-port", str(taken)])
    assert clash.popen.wait(timeout=60) == 2
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in clash.log_text()
    assert "Traceback" not in clash.log_text()
    wait_for(
        lambda: "broker listening" in broker.log_text(),
        timeout_s=30,
        what="broker started",
        watch=[broker],
    )
    assert "metrics on http" not in broker.log_text()
