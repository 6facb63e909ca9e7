"""Automatic rollback and gradual rollout end to end: broker, worker and two real frontends
started with ``--routing FILE`` (the issue's YAML shape), driven by tritonclient.

A canary failing 20 % of calls and one taking 200 ms are rolled back, and then neither
frontend sends them anything; a healthy canary under the same load stays; a rollout walks
its steps with a 1 s dwell until every call on both frontends reaches the canary.

Needs the routing layer (``frontend/routing/``): skipped where it is not there yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import STACKS_KEY
from .route_models import (
    DIM,
    FAIL_EVERY,
    FAILING,
    HEALTHY,
    ROUTE_MODELS,
    SLOW,
    STABLE,
    build_route_repo,
)
from .stack import REPO_ROOT, Stack, free_port
from .test_metrics import scrape, value

if not (REPO_ROOT / "frontend" / "routing").is_dir():
    pytest.skip("the routing layer (frontend/routing/) is not here yet", allow_module_level=True)

pytestmark = pytest.mark.timeout(420)

MIN_REQUESTS = 100
DECIDE_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 20.0
THREADS = 8

ROUTING_YAML = f"""\
routes:
  canary_fail:
    targets:
      - {{model: {STABLE}, version: "1", weight: 80}}
      - {{model: {FAILING}, version: "1", weight: 20}}
    rollback: {{window_s: 30, min_requests: {MIN_REQUESTS}, max_error_rate_delta: 0.05, max_p99_ratio: 2.0}}
  canary_slow:
    targets:
      - {{model: {STABLE}, version: "1", weight: 80}}
      - {{model: {SLOW}, version: "1", weight: 20}}
    rollback: {{window_s: 30, min_requests: {MIN_REQUESTS}, max_error_rate_delta: 0.05, max_p99_ratio: 2.0}}
  canary_ok:
    targets:
      - {{model: {STABLE}, version: "1", weight: 80}}
      - {{model: {HEALTHY}, version: "1", weight: 20}}
    rollback: {{window_s: 30, min_requests: {MIN_REQUESTS}, max_error_rate_delta: 0.05, max_p99_ratio: 2.0}}
  rollout:
    targets:
      - {{model: {STABLE}, version: "1", weight: 90}}
      - {{model: {HEALTHY}, version: "1", weight: 10}}
    rollout: {{steps: [10, 50, 100], dwell_s: 1}}
    rollback: {{window_s: 30, min_requests: 10, max_error_rate_delta: 0.05, max_p99_ratio: 2.0}}
"""  # noqa: E501


@dataclass
class RoutedStack:
    stack: Stack
    metrics_port: int
    clients: list[grpcclient.InferenceServerClient] = field(default_factory=list)

    def broker_metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.metrics_port), name, **labels)

    def broker_metric_or_none(self, name: str, **labels: str) -> float | None:
        """The sample, or None while the broker has none (it has not heard of the route)."""
        try:
            return self.broker_metric(name, **labels)
        except AssertionError:
            return None


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedStack]:
    root = tmp_path_factory.mktemp("rollback_e2e")
    repo = build_route_repo(root / "models")
    routing = root / "routing.yaml"
    routing.write_text(ROUTING_YAML)
    stack = Stack(log_dir=root / "logs", model_repository=repo, name="routed")
    metrics_port = free_port()
    try:
        stack.start_broker(["--metrics-port", str(metrics_port)])
        stack.start_worker()
        for _ in range(2):
            stack.start_frontend(extra_args=["--routing", str(routing)])
        routed = RoutedStack(stack, metrics_port)
        for fe in stack.frontends:
            stack.wait_live(fe)
            stack.wait_ready(ROUTE_MODELS, frontend=fe)
            routed.clients.append(stack.client(fe))
        yield routed
    finally:
        stack.stop()


@pytest.fixture
def rs(routed: RoutedStack, request: pytest.FixtureRequest) -> Iterator[RoutedStack]:
    request.node.stash.setdefault(STACKS_KEY, []).append(routed.stack)
    yield routed
    routed.stack.assert_alive()


@dataclass
class Served:
    """What calls through a route came back with: the model that served each, or its error."""

    models: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, model: str) -> int:
        with self.lock:
            return self.models.count(model)


def call(client: grpcclient.InferenceServerClient, route: str, n: int, served: Served) -> None:
    tensor = grpcclient.InferInput("INPUT0", [DIM], "INT32")
    x = np.arange(n, n + DIM, dtype=np.int32)
    tensor.set_data_from_numpy(x)
    try:
        result = client.infer(route, [tensor], client_timeout=CALL_TIMEOUT_S)
    except InferenceServerException as exc:
        with served.lock:
            served.errors.append(str(exc.status()))
        return
    out = result.as_numpy("OUTPUT0")
    assert out is not None and (out == 2 * x).all()
    with served.lock:
        served.models.append(result.get_response().model_name)


def drive(
    rs: RoutedStack, route: str, until: Callable[[Served], bool], timeout_s: float
) -> tuple[Served, bool]:
    """Calls through ``route`` from ``THREADS`` threads over both frontends until
    ``until(served so far)`` or ``timeout_s``."""
    served = Served()
    stop = threading.Event()
    numbers = iter(range(10**9))
    numbers_lock = threading.Lock()

    def loop(index: int) -> None:
        client = rs.clients[index % len(rs.clients)]
        while not stop.is_set():
            with numbers_lock:
                n = next(numbers)
            call(client, route, n, served)

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(loop, i) for i in range(THREADS)]
        deadline = time.monotonic() + timeout_s
        done = False
        while time.monotonic() < deadline and not (done := until(served)):
            time.sleep(0.2)
        stop.set()
        for f in futures:
            f.result()
    return served, done


def calls_on_each_frontend(rs: RoutedStack, route: str, calls: int) -> list[Served]:
    out = []
    for client in rs.clients:
        served = Served()
        for n in range(calls):
            call(client, route, n, served)
        out.append(served)
    return out


def rolled_back(rs: RoutedStack, route: str) -> bool:
    return rs.broker_metric_or_none("fabric_broker_route_rolled_back", route=route) == 1


def wait_for_rollback(rs: RoutedStack, route: str, canary: str) -> Served:
    served, done = drive(rs, route, lambda _: rolled_back(rs, route), DECIDE_TIMEOUT_S)
    assert done, f"{canary} was not rolled back; served {len(served.models)} calls"
    time.sleep(1.0)  # the decision reaches every frontend within a heartbeat (0.2 s here)
    for after in calls_on_each_frontend(rs, route, 100):
        assert after.count(canary) == 0 and after.errors == [], "the canary still gets traffic"
        assert after.count(STABLE) == 100
    return served


def test_a_failing_canary_is_rolled_back_on_both_frontends(rs: RoutedStack) -> None:
    served = wait_for_rollback(rs, "canary_fail", FAILING)
    failed = len(served.errors)
    canary_calls = served.count(FAILING) + failed
    assert canary_calls >= MIN_REQUESTS
    assert abs(failed / canary_calls - 1 / FAIL_EVERY) < 0.1
    labels = {"route": "canary_fail", "model": FAILING, "version": "1", "reason": "error_rate"}
    assert rs.broker_metric("fabric_broker_route_rollbacks_total", **labels) == 1
    log = rs.stack.broker.log_text()
    assert "route rollback: route=canary_fail" in log and "rule=error_rate" in log


def test_a_slow_canary_is_rolled_back_on_both_frontends(rs: RoutedStack) -> None:
    served = wait_for_rollback(rs, "canary_slow", SLOW)
    assert served.errors == []
    labels = {"route": "canary_slow", "model": SLOW, "version": "1", "reason": "p99_latency"}
    assert rs.broker_metric("fabric_broker_route_rollbacks_total", **labels) == 1


def test_a_healthy_canary_under_the_same_load_is_not_rolled_back(rs: RoutedStack) -> None:
    def enough(served: Served) -> bool:
        return served.count(HEALTHY) >= 2 * MIN_REQUESTS

    served, done = drive(rs, "canary_ok", enough, DECIDE_TIMEOUT_S)
    assert done and served.errors == []
    time.sleep(1.0)  # a few broker ticks after the last call
    assert not rolled_back(rs, "canary_ok")
    # The rule had its data: min_requests on both sides of the window.
    labels = {"route": "canary_ok", "version": "1"}
    for model in (HEALTHY, STABLE):
        requests = rs.broker_metric("fabric_broker_route_window_requests", model=model, **labels)
        assert requests >= MIN_REQUESTS, (model, requests)
    for after in calls_on_each_frontend(rs, "canary_ok", 100):
        assert after.count(HEALTHY) > 0  # still in the split on both frontends


def test_rollout_steps_advance_until_every_call_reaches_the_canary(rs: RoutedStack) -> None:
    steps: list[float] = []

    def at_last_step(_: Served) -> bool:
        step = rs.broker_metric_or_none("fabric_broker_route_rollout_step", route="rollout")
        if step is None:
            return False
        if not steps or steps[-1] != step:
            steps.append(step)
        return step == 2

    _, done = drive(rs, "rollout", at_last_step, DECIDE_TIMEOUT_S)
    assert done, f"the rollout stopped at steps {steps}"
    assert steps == sorted(steps) and steps[-1] == 2
    time.sleep(1.0)
    for after in calls_on_each_frontend(rs, "rollout", 50):
        assert after.count(HEALTHY) == 50, "at the last step every call goes to the canary"
