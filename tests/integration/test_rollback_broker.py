"""The broker's canary decisions with real processes: a real broker and worker, and two fake
frontends (``rollout_driver``) that report routes on their heartbeats and send real requests
to the targets the broker's decisions pick.

A canary failing 20 % of calls and one taking 200 ms are rolled back (with a log line and a
metric naming the rule); a healthy canary under the same load is not, though the rule had its
data; both frontends hear the same decision; a rollout walks its steps with a 1 s dwell.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from fabric import errors
from fabric.routes import RouteSpec

from .conftest import STACKS_KEY
from .rollout_driver import Fleet, route_spec
from .route_models import FAIL_EVERY, FAILING, HEALTHY, ROUTE_MODELS, SLOW, STABLE, build_route_repo
from .stack import STARTUP_TIMEOUT_S, Stack, free_port, wait_for
from .test_metrics import scrape, value

pytestmark = pytest.mark.timeout(300)

DECIDE_TIMEOUT_S = 60.0
"""Longest wait for a rollback: min_requests canary calls at 20 % of the traffic, on a busy
machine, take a few seconds."""


@pytest.fixture(scope="module")
def route_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    repo = build_route_repo(tmp_path_factory.mktemp("route_repo") / "models")
    stack = Stack(log_dir=tmp_path_factory.mktemp("rollback"), model_repository=repo, name="route")
    metrics_port = free_port()
    try:
        stack.start_broker(["--metrics-port", str(metrics_port)])
        stack.start_worker()
        yield stack, metrics_port
    finally:
        stack.stop()


def fleet_for(
    route_stack: tuple[Stack, int], request: pytest.FixtureRequest, *specs: RouteSpec
) -> Iterator[Fleet]:
    stack, _ = route_stack
    request.node.stash.setdefault(STACKS_KEY, []).append(stack)
    fleet = Fleet(stack.broker_frontend_addr, 2, list(specs))
    try:
        fleet.wait_serving(ROUTE_MODELS, STARTUP_TIMEOUT_S)
        yield fleet
    finally:
        fleet.close()
    stack.assert_alive()


FAILING_ROUTE = route_spec("canary_fail", FAILING)
SLOW_ROUTE = route_spec("canary_slow", SLOW)
HEALTHY_ROUTE = route_spec("canary_ok", HEALTHY)
ROLLOUT_ROUTE = route_spec(
    "rollout", HEALTHY, weights=(90, 10), steps=[10, 50, 100], dwell_s=1.0, min_requests=10
)


@pytest.fixture
def fleet(route_stack: tuple[Stack, int], request: pytest.FixtureRequest) -> Iterator[Fleet]:
    yield from fleet_for(route_stack, request, FAILING_ROUTE, SLOW_ROUTE, HEALTHY_ROUTE)


def rolled_back(fleet: Fleet, spec: RouteSpec) -> bool:
    return all((d := fe.decision(spec)) is not None and d.rolled_back for fe in fleet.frontends)


def broker_metric(route_stack: tuple[Stack, int], name: str, **labels: str) -> float:
    return value(scrape(route_stack[1]), name, **labels)


def test_a_failing_canary_is_rolled_back_the_same_on_both_frontends(
    fleet: Fleet, route_stack: tuple[Stack, int]
) -> None:
    assert fleet.drive(
        FAILING_ROUTE, until=lambda: rolled_back(fleet, FAILING_ROUTE), timeout_s=DECIDE_TIMEOUT_S
    ), "the failing canary was not rolled back"
    fleet.settle()
    first, second = (fe.decision(FAILING_ROUTE) for fe in fleet.frontends)
    assert first == second
    assert first is not None
    assert (first.reason, first.canary_weight) == ("error_rate", 0)
    statuses = fleet.outcomes(FAILING)
    failed = statuses.count(errors.INTERNAL) / len(statuses)
    assert len(statuses) >= FAILING_ROUTE.min_requests
    assert abs(failed - 1 / FAIL_EVERY) < 0.1, f"the canary failed {failed:.0%} of calls"
    # Traffic after the decision goes to the stable target only.
    before = len(statuses)
    fleet.drive(FAILING_ROUTE, until=lambda: False, timeout_s=1.0)
    fleet.settle()
    assert len(fleet.outcomes(FAILING)) == before
    stack, _ = route_stack
    [line] = [ln for ln in stack.broker.log_text().splitlines() if "route=canary_fail" in ln]
    for part in ("route rollback:", f"model={FAILING}", "version=1", "rule=error_rate"):
        assert part in line
    labels = {"route": "canary_fail", "model": FAILING, "version": "1", "reason": "error_rate"}
    wait_for(
        lambda: broker_metric(route_stack, "fabric_broker_route_rollbacks_total", **labels) == 1,
        timeout_s=5.0,
        what="the rollback counted in the broker's metrics",
    )
    assert broker_metric(route_stack, "fabric_broker_route_rolled_back", route="canary_fail") == 1


def test_a_slow_canary_is_rolled_back_on_p99(fleet: Fleet) -> None:
    assert fleet.drive(
        SLOW_ROUTE, until=lambda: rolled_back(fleet, SLOW_ROUTE), timeout_s=DECIDE_TIMEOUT_S
    ), "the slow canary was not rolled back"
    fleet.settle()
    first, second = (fe.decision(SLOW_ROUTE) for fe in fleet.frontends)
    assert first == second
    assert first is not None and first.reason == "p99_latency"
    assert set(fleet.outcomes(SLOW)) == {errors.OK}  # slow, never failing


def test_a_healthy_canary_under_the_same_load_stays(
    fleet: Fleet, route_stack: tuple[Stack, int]
) -> None:
    spec = HEALTHY_ROUTE
    labels = {"route": spec.route, "model": HEALTHY, "version": "1"}
    target = 2 * spec.min_requests

    def enough() -> bool:
        return len(fleet.outcomes(HEALTHY)) >= target

    assert fleet.drive(spec, until=enough, timeout_s=DECIDE_TIMEOUT_S)
    fleet.settle()
    time.sleep(0.5)  # a few broker ticks and heartbeats after the last outcome
    fleet.step()
    for fe in fleet.frontends:
        decision = fe.decision(spec)
        assert decision is not None and not decision.rolled_back, decision
    # The rule had its data: min_requests on both sides in the window.
    window = broker_metric(route_stack, "fabric_broker_route_window_requests", **labels)
    stable = broker_metric(
        route_stack, "fabric_broker_route_window_requests", route=spec.route, model=STABLE
    )
    assert window >= spec.min_requests and stable >= spec.min_requests, (window, stable)
    assert broker_metric(route_stack, "fabric_broker_route_rolled_back", route=spec.route) == 0


@pytest.fixture
def rollout_fleet(
    route_stack: tuple[Stack, int], request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    yield from fleet_for(route_stack, request, ROLLOUT_ROUTE)


def test_rollout_steps_advance_with_a_short_dwell(rollout_fleet: Fleet) -> None:
    fleet, spec = rollout_fleet, ROLLOUT_ROUTE

    def at_last_step() -> bool:
        return all((d := fe.decision(spec)) is not None and d.step == 2 for fe in fleet.frontends)

    assert fleet.drive(spec, until=at_last_step, timeout_s=DECIDE_TIMEOUT_S)
    fleet.settle()
    for fe in fleet.frontends:
        steps = [(t, d.step, d.canary_weight) for t, d in fe.history if d.digest == spec.digest]
        assert [(s, w) for _, s, w in steps] == [(0, 10), (1, 50), (2, 100)]
        # Each step held its dwell (as heard: give or take a heartbeat each way).
        for (t0, _, _), (t1, _, _) in itertools.pairwise(steps):
            assert t1 - t0 >= spec.dwell_s - 0.3, steps
    assert not any(d.rolled_back for fe in fleet.frontends for _, d in fe.history)
    # At the last step every call goes to the canary.
    before = len(fleet.outcomes(STABLE))
    fleet.drive(spec, until=lambda: False, timeout_s=0.5)
    fleet.settle()
    assert len(fleet.outcomes(STABLE)) == before
