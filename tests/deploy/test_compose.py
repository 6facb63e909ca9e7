"""The compose stack for real (``make test-compose``): images built by the Makefile, started with
docker compose (2 frontends behind the balancer, 2 workers), driven with tritonclient through
the balancer's port.

One client connection carries every call, so calls reaching both frontends shows per-call
(not per-connection) balancing. Then: Prometheus scrapes every replica; a worker container is
SIGKILLed under load and no call fails; a worker, then a frontend, added at run time get
traffic with no call failing (the balancer follows Docker's DNS); and every tier exits 0 on
``docker compose stop`` (tini hands SIGTERM to the tier, whose drain runs).

Skipped unless FABRICSERVE_TEST_COMPOSE=1 (set by ``make test-compose``) and docker answers.
The figures of each phase are printed (``-s``) for the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from .compose import ComposeProject, docker_available, wait_until

RUN_COMPOSE = os.environ.get("FABRICSERVE_TEST_COMPOSE") == "1"
pytestmark = [
    pytest.mark.skipif(
        not RUN_COMPOSE,
        reason="the compose stack runs under `make test-compose` (FABRICSERVE_TEST_COMPOSE=1)",
    ),
    # Asked only when the stack is to run: the normal test run does not start docker.
    pytest.mark.skipif(RUN_COMPOSE and not docker_available(), reason="docker is not available"),
    pytest.mark.timeout(600),
]

MODEL = "simple"
CALLERS = 8
CALL_TIMEOUT_S = 30.0
"""Far above a worker's loss detection (heartbeat 1 s x 3) plus the frontend's retry."""
STARTUP_TIMEOUT_S = 300.0
"""Keys, demo models (torch import), then workers loading them, on two busy cores."""
PHASE_TIMEOUT_S = 120.0
CALLS_PER_REPLICA = 50
SUCCESS = "nv_inference_request_success"


class Load:
    """CALLERS threads calling ``MODEL`` through one shared client (one HTTP/2 connection)
    until stopped; counts successes and keeps every failure."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient  # here: see tests/conftest.py on protobuf

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = time.monotonic()

    def _inputs(self) -> list[Any]:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            self._grpc.InferInput("INPUT0", [1, 16], "INT32"),
            self._grpc.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(np.ones_like(a))
        return inputs

    def _call_loop(self) -> None:
        inputs = self._inputs()
        expected = np.arange(16, dtype=np.int32).reshape(1, 16) + 1
        while not self._stop.is_set():
            try:
                result = self.client.infer(MODEL, inputs, client_timeout=CALL_TIMEOUT_S)
                assert np.array_equal(result.as_numpy("OUTPUT0"), expected)
            except Exception as e:  # any failure is counted, and the test fails on it
                with self._lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
            else:
                with self._lock:
                    self.ok += 1

    def start(self) -> Load:
        self.started = time.monotonic()
        for i in range(CALLERS):
            t = threading.Thread(target=self._call_loop, name=f"caller-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> float:
        """Stop and join the callers; the seconds the load ran."""
        self._stop.set()
        for t in self._threads:
            t.join(CALL_TIMEOUT_S + 5)
        self.client.close()
        return time.monotonic() - self.started

    def summary(self) -> str:
        kinds = Counter(f.split(":", 1)[0] for f in self.failures)
        return f"{self.ok} ok, {len(self.failures)} failed {dict(kinds)}"


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeProject]:
    project = ComposeProject(name=f"fabricserve-test-{os.getpid()}")
    started = time.monotonic()
    try:
        project.up(frontend=2, worker=2)
        wait_until(lambda: ready(project), STARTUP_TIMEOUT_S, "model ready through the balancer")
        print(f"\n[compose] stack up and {MODEL} ready in {time.monotonic() - started:.1f} s")
        yield project
    except BaseException:
        print(project.logs())
        raise
    finally:
        project.down()


def ready(project: ComposeProject) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(project.lb_url) as c:
            return bool(c.is_server_ready() and c.is_model_ready(MODEL))
    except Exception:  # not up yet: the balancer or a tier is still starting
        return False


def served(project: ComposeProject, service: str) -> dict[str, float]:
    """Successful calls of MODEL per running container of ``service``."""
    return {
        c.name: project.metric_sum(c, SUCCESS, model=MODEL) for c in project.containers(service)
    }


def test_every_container_becomes_healthy(stack: ComposeProject) -> None:
    services = ("broker", "frontend", "worker", "lb")

    def all_healthy() -> bool:
        return all(stack.health(c) == "healthy" for s in services for c in stack.containers(s))

    wait_until(all_healthy, PHASE_TIMEOUT_S, "every container healthy")
    assert [len(stack.containers(s)) for s in services] == [1, 2, 2, 1]


def test_the_fabric_speaks_curve(stack: ComposeProject) -> None:
    """Both broker ports offer CURVE (read from their ZMTP greeting, from this host over the
    compose network): compose comes up secure by default."""
    from tests.integration.zmtp import greeting_mechanism

    (broker,) = stack.containers("broker")
    address = stack.address(broker)
    for port in (5555, 5556):
        assert greeting_mechanism(address, port) == "CURVE", f"broker port {port}"


def test_calls_spread_over_both_frontends_and_both_workers(stack: ComposeProject) -> None:
    before = {**served(stack, "frontend"), **served(stack, "worker")}
    load = Load(stack.lb_url).start()
    try:

        def everyone_served() -> bool:
            now = {**served(stack, "frontend"), **served(stack, "worker")}
            return all(now[n] - before.get(n, 0) >= CALLS_PER_REPLICA for n in now)

        wait_until(everyone_served, PHASE_TIMEOUT_S, "calls on every frontend and worker")
    finally:
        seconds = load.stop()
    frontends = {n: v - before.get(n, 0) for n, v in served(stack, "frontend").items()}
    workers = {n: v - before.get(n, 0) for n, v in served(stack, "worker").items()}
    print(f"\n[compose] spread: {load.summary()} in {seconds:.1f} s; "
          f"frontends {frontends}; workers {workers}")  # fmt: skip
    assert load.failures == []
    assert len(frontends) == 2 and len(workers) == 2
    # Round robin per call: neither frontend takes much more than its half.
    total = sum(frontends.values())
    assert all(v >= 0.3 * total for v in frontends.values()), frontends


def test_prometheus_scrapes_every_replica(stack: ComposeProject) -> None:
    url = f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets?state=active"

    def up_per_job() -> Counter[str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                targets = json.load(reply)["data"]["activeTargets"]
        except OSError:
            return Counter()
        return Counter(t["labels"]["job"] for t in targets if t["health"] == "up")

    wait_until(
        lambda: up_per_job() == Counter(broker=1, frontend=2, worker=2),
        PHASE_TIMEOUT_S,
        "Prometheus scraping 1 broker, 2 frontends, 2 workers",
    )


def live_workers(stack: ComposeProject) -> float:
    (broker,) = stack.containers("broker")
    return stack.metric_sum(broker, "fabric_broker_workers")


def test_worker_killed_under_load_fails_no_call(stack: ComposeProject) -> None:
    victim = stack.containers("worker")[0]
    load = Load(stack.lb_url).start()
    try:
        wait_until(lambda: load.ok >= 200, PHASE_TIMEOUT_S, "load running")
        subprocess.run(["docker", "kill", "--signal=KILL", victim.id], check=True,
                       capture_output=True)  # fmt: skip
        killed_at = time.monotonic()
        wait_until(lambda: live_workers(stack) == 1, PHASE_TIMEOUT_S, "broker drops the worker")
        dropped_s = time.monotonic() - killed_at
        ok_then = load.ok
        wait_until(lambda: load.ok >= ok_then + 200, PHASE_TIMEOUT_S, "calls after the loss")
    finally:
        seconds = load.stop()
    print(f"\n[compose] SIGKILL {victim.name}: {load.summary()} in {seconds:.1f} s; "
          f"the broker dropped it after {dropped_s:.1f} s")  # fmt: skip
    assert load.failures == []
    assert victim not in stack.containers("worker")


def test_worker_added_at_run_time_gets_traffic(stack: ComposeProject) -> None:
    before = {c.name for c in stack.containers("worker", running_only=False)}
    live_before = live_workers(stack)
    load = Load(stack.lb_url).start()
    try:
        wait_until(lambda: load.ok >= 100, PHASE_TIMEOUT_S, "load running")
        stack.scale("worker", len(before) + 1)
        added = [c for c in stack.containers("worker") if c.name not in before]
        assert len(added) == 1, added
        (new,) = added

        def new_one_served() -> bool:
            try:
                return stack.metric_sum(new, SUCCESS, model=MODEL) >= CALLS_PER_REPLICA
            except OSError:  # its metrics endpoint is not up yet
                return False

        wait_until(new_one_served, STARTUP_TIMEOUT_S, f"calls served by {new.name}")
    finally:
        seconds = load.stop()
    print(
        f"\n[compose] scaled workers to {len(before) + 1} under load ({live_before:.0f} live "
        f"before): {load.summary()} in {seconds:.1f} s; workers {served(stack, 'worker')}"
    )
    assert load.failures == []


def test_frontend_added_at_run_time_gets_calls(stack: ComposeProject) -> None:
    before = {c.name for c in stack.containers("frontend", running_only=False)}
    load = Load(stack.lb_url).start()
    try:
        wait_until(lambda: load.ok >= 100, PHASE_TIMEOUT_S, "load running")
        stack.scale("frontend", len(before) + 1)
        (new,) = [c for c in stack.containers("frontend") if c.name not in before]

        def new_one_served() -> bool:
            try:
                return stack.metric_sum(new, SUCCESS, model=MODEL) >= CALLS_PER_REPLICA
            except OSError:  # its metrics endpoint is not up yet
                return False

        # The balancer re-reads Docker's DNS every 2 s and reloads nginx on a change.
        wait_until(new_one_served, PHASE_TIMEOUT_S, f"calls through {new.name}")
    finally:
        seconds = load.stop()
    print(
        f"\n[compose] scaled frontends to {len(before) + 1} under load: {load.summary()} in "
        f"{seconds:.1f} s; frontends {served(stack, 'frontend')}"
    )
    assert load.failures == []


def test_every_tier_stops_cleanly_on_sigterm(stack: ComposeProject) -> None:
    running = [c for s in ("lb", "frontend", "worker", "broker") for c in stack.containers(s)]
    started = time.monotonic()
    stack.compose("stop")
    print(f"\n[compose] stop: {len(running)} containers in {time.monotonic() - started:.1f} s")
    assert {c.name: stack.exit_code(c) for c in running} == {c.name: 0 for c in running}
