"""One rollout and rollback decision per route digest, with a fake clock: the decider alone
(which outcomes count, rollback latched until the digest changes, rollout held without data,
state seeded from a frontend after a restart, bad reports) and through the dispatcher (the
outcomes of real request paths, decisions on heartbeat answers)."""

from __future__ import annotations

import logging

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from broker.route_decider import (
    MAX_ROUTES_PER_FRONTEND,
    PENDING_MAX_AGE_S,
    ROUTE_FORGET_S,
    RouteDecider,
)
from broker.route_metrics import RouteMetrics
from broker.route_rules import ERROR_RATE, P99_LATENCY
from fabric import errors
from fabric.protocol import CancelHeader, HeartbeatHeader, MsgType
from fabric.routes import NO_ROLLOUT, RouteDecision, RouteSpec, TargetKey

from .test_dispatcher import FE, FE2, W1, W2, Harness

STABLE = ("clf", "1")
CANARY = ("clf", "2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(
    digest: str = "a" * 64,
    *,
    steps: list[int] | None = None,
    dwell_s: float = 10.0,
    min_requests: int = 50,
    delta: float = 0.02,
    ratio: float = 2.0,
    window_s: float = 30.0,
) -> RouteSpec:
    return RouteSpec(
        "clf",
        digest,
        [TargetKey(*STABLE), TargetKey(*CANARY)],
        [90, 10],
        steps or [],
        dwell_s,
        window_s,
        min_requests,
        delta,
        ratio,
    )


class Traffic:
    """Drives a decider the way the dispatcher does."""

    def __init__(self, decider: RouteDecider, clock: Clock) -> None:
        self.d = decider
        self.clock = clock
        self._rid = 0

    def calls(self, key: tuple[str, str], n: int, *, errors_: int = 0, latency_s: float = 0.01):
        for i in range(n):
            self._rid += 1
            rkey = (FE, self._rid)
            self.d.start(rkey, key)
            self.clock.now += latency_s
            self.d.finish(rkey, errors.INTERNAL if i < errors_ else errors.OK)
            self.clock.now -= latency_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def decider(clock: Clock) -> RouteDecider:
    return RouteDecider(clock)


def only(decider: RouteDecider, frontend: bytes = FE) -> RouteDecision:
    [decision] = decider.decisions_for(frontend)
    return decision


# ---- the decider alone ------------------------------------------------------------------------


def test_reported_targets_are_watched(decider: RouteDecider) -> None:
    assert decider.watched == set()
    decider.report(FE, [spec()])
    assert decider.watched == {STABLE, CANARY}
    d = only(decider)
    assert (d.step, d.canary_weight, d.rolled_back) == (NO_ROLLOUT, 10, False)


@pytest.mark.parametrize(
    ("status", "counted", "error"),
    [
        (errors.OK, True, False),
        (errors.INTERNAL, True, True),
        (errors.UNAVAILABLE, True, True),
        (errors.ABORTED, True, True),
        (errors.DEADLINE_EXCEEDED, True, True),
        (errors.INVALID_ARGUMENT, False, False),
        (errors.CANCELLED, False, False),
        (errors.RESOURCE_EXHAUSTED, False, False),
        (errors.NOT_FOUND, False, False),
    ],
)
def test_which_outcomes_count(
    decider: RouteDecider, clock: Clock, status: str, counted: bool, error: bool
) -> None:
    decider.report(FE, [spec()])
    decider.start((FE, 1), CANARY)
    clock.now += 0.25
    decider.finish((FE, 1), status)
    [stable, canary] = decider.target_stats(spec())
    assert stable.count == 0
    assert (canary.count, canary.errors) == (int(counted), int(error))
    if counted and not error:
        assert canary.p99_s == pytest.approx(0.25, rel=0.06)  # admission to reply
    assert decider.pending == {}


def test_an_error_rate_rollback_latches_until_the_digest_changes(
    decider: RouteDecider, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec()])
    traffic.calls(STABLE, 450, errors_=4)
    traffic.calls(CANARY, 50, errors_=10)  # 20 % against < 1 %
    with caplog.at_level(logging.WARNING, "broker.route_decider"):
        decider.tick()
    d = only(decider)
    assert (d.rolled_back, d.reason, d.canary_weight) == (True, ERROR_RATE, 0)
    [line] = [r.getMessage() for r in caplog.records if "rollback" in r.getMessage()]
    for part in ("route=clf", "model=clf", "version=2", "rule=error_rate", "canary_requests=50"):
        assert part in line
    assert "canary_error_rate=0.2000" in line
    # A healthy window later changes nothing: the rollback stays until the file changes.
    clock.now += 100.0
    traffic.calls(STABLE, 450)
    traffic.calls(CANARY, 50)
    decider.tick()
    assert only(decider).rolled_back
    assert sum(decider.rollbacks.values()) == 1
    # A new digest (the file changed) starts clean, and the old one is forgotten in time.
    decider.report(FE, [spec("b" * 64)])
    d = only(decider)
    assert (d.digest, d.rolled_back, d.canary_weight) == ("b" * 64, False, 10)
    clock.now += ROUTE_FORGET_S + 1
    decider.report(FE, [spec("b" * 64)])
    decider.tick()
    assert set(decider.routes) == {"b" * 64}


def test_a_slow_canary_is_rolled_back_on_p99(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec()])
    traffic.calls(STABLE, 450, latency_s=0.005)
    traffic.calls(CANARY, 50, latency_s=0.205)
    decider.tick()
    d = only(decider)
    assert (d.rolled_back, d.reason) == (True, P99_LATENCY)


def test_a_healthy_canary_is_never_rolled_back(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec()])
    for _ in range(120):
        traffic.calls(STABLE, 90, errors_=1, latency_s=0.010)
        traffic.calls(CANARY, 10, latency_s=0.011)
        clock.now += 1.0
        decider.tick()
    assert not only(decider).rolled_back
    assert decider.rollbacks == {}


def test_no_rollback_on_too_few_canary_calls(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec(min_requests=50)])
    traffic.calls(STABLE, 1000)
    traffic.calls(CANARY, 49, errors_=49)
    decider.tick()
    assert not only(decider).rolled_back
    traffic.calls(CANARY, 1, errors_=1)
    decider.tick()
    assert only(decider).rolled_back


def test_old_outcomes_leave_the_window(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec(window_s=10.0)])
    traffic.calls(CANARY, 50, errors_=50)
    clock.now += 11.0
    traffic.calls(STABLE, 100)
    traffic.calls(CANARY, 50)
    decider.tick()
    assert not only(decider).rolled_back


def test_rollout_advances_with_data_and_holds_without(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec(steps=[10, 50, 100], dwell_s=5.0, window_s=60.0)])
    assert (only(decider).step, only(decider).canary_weight) == (0, 10)
    clock.now += 6.0
    decider.tick()
    assert only(decider).step == 0  # due, but no data on either side: held
    assert decider.routes["a" * 64].held
    traffic.calls(STABLE, 60)
    traffic.calls(CANARY, 60)
    decider.tick()
    assert (only(decider).step, only(decider).canary_weight) == (1, 50)
    clock.now += 5.0
    decider.tick()
    assert (only(decider).step, only(decider).canary_weight) == (2, 100)


def test_rollout_without_rules_advances_on_time_alone(decider: RouteDecider, clock: Clock) -> None:
    decider.report(FE, [spec(steps=[25, 100], dwell_s=1.0, delta=0.0, ratio=0.0)])
    clock.now += 1.0
    decider.tick()
    assert only(decider).canary_weight == 100


def test_a_rolled_back_rollout_stops(decider: RouteDecider, clock: Clock) -> None:
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec(steps=[10, 50], dwell_s=1.0)])
    traffic.calls(STABLE, 100)
    traffic.calls(CANARY, 60, errors_=30)
    clock.now += 2.0
    decider.tick()
    d = only(decider)
    assert (d.rolled_back, d.step, d.canary_weight) == (True, 0, 0)


def test_a_new_broker_starts_from_what_the_frontend_holds(decider: RouteDecider) -> None:
    held = RouteDecision("clf", "a" * 64, 1, 0, True, ERROR_RATE)
    decider.report(FE, [spec(steps=[10, 50, 100])], [held])
    d = only(decider)
    assert (d.rolled_back, d.reason, d.step, d.canary_weight) == (True, ERROR_RATE, 1, 0)
    assert decider.rollbacks == {}  # not a rollback of ours: not counted again
    # For a digest the broker already tracks, a frontend's step changes nothing ...
    other = RouteDecider()
    other.report(FE, [spec(steps=[10, 50, 100])])
    other.report(
        FE2, [spec(steps=[10, 50, 100])], [RouteDecision("clf", "a" * 64, 2, 100, False, "")]
    )
    assert only(other, FE2).step == 0
    # ... but a rollback (another broker decided it) latches here too, uncounted.
    other.report(FE2, [spec(steps=[10, 50, 100])], [held])
    d = only(other, FE2)
    assert (d.rolled_back, d.reason, d.step, d.canary_weight) == (True, ERROR_RATE, 0, 0)
    assert other.rollbacks == {}
    other.report(FE2, [spec(steps=[10, 50, 100])], [])
    assert only(other, FE2).rolled_back  # latched


def test_each_frontend_gets_the_decisions_on_its_own_routes(decider: RouteDecider) -> None:
    decider.report(FE, [spec("a" * 64)])
    decider.report(FE2, [spec("b" * 64)])
    assert [d.digest for d in decider.decisions_for(FE)] == ["a" * 64]
    assert [d.digest for d in decider.decisions_for(FE2)] == ["b" * 64]
    decider.forget_frontend(FE2)
    assert decider.decisions_for(FE2) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"weights": [90]},
        {"targets": []},
        {"weights": [90, -1]},
        {"rollout_steps": [10, 150]},
        {"dwell_s": float("nan")},
        {"max_p99_ratio": -1.0},
        {"route": ""},
    ],
)
def test_invalid_reports_are_ignored(decider: RouteDecider, bad: dict[str, object]) -> None:
    decider.report(FE, [msgspec.structs.replace(spec(), **bad)])
    assert decider.routes == {}
    assert decider.watched == set()


def test_reports_are_bounded(decider: RouteDecider) -> None:
    many = [spec(f"{i:064x}") for i in range(MAX_ROUTES_PER_FRONTEND + 10)]
    decider.report(FE, many)
    assert len(decider.routes) == MAX_ROUTES_PER_FRONTEND


def test_a_missing_window_gets_the_default(decider: RouteDecider) -> None:
    decider.report(FE, [spec(window_s=0.0, delta=0.0, ratio=0.0, steps=[10, 100])])
    assert decider.routes["a" * 64].spec.window_s == 60.0


def test_requests_whose_end_is_never_seen_are_dropped(decider: RouteDecider, clock: Clock) -> None:
    decider.report(FE, [spec()])
    decider.start((FE, 1), CANARY)
    clock.now += 1.0
    decider.start((FE, 2), CANARY)
    clock.now += PENDING_MAX_AGE_S - 0.5
    decider.tick()
    assert list(decider.pending) == [(FE, 2)]


def test_metrics_show_weights_steps_and_rollbacks(decider: RouteDecider, clock: Clock) -> None:
    registry = CollectorRegistry()
    metrics = RouteMetrics(registry, decider)
    traffic = Traffic(decider, clock)
    decider.report(FE, [spec(steps=[20, 100], dwell_s=100.0)])
    metrics.refresh()

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert get("fabric_broker_route_weight", route="clf", model="clf", version="2") == 20
    assert get("fabric_broker_route_weight", route="clf", model="clf", version="1") == 80
    assert get("fabric_broker_route_rollout_step", route="clf") == 0
    traffic.calls(STABLE, 100)
    traffic.calls(CANARY, 100, errors_=50)
    decider.tick()
    metrics.refresh()
    metrics.refresh()  # counted once however often refreshed
    assert get("fabric_broker_route_weight", route="clf", model="clf", version="2") == 0
    assert get("fabric_broker_route_rolled_back", route="clf") == 1
    labels = {"route": "clf", "model": "clf", "version": "2", "reason": ERROR_RATE}
    assert get("fabric_broker_route_rollbacks_total", **labels) == 1
    assert get("fabric_broker_route_window_error_rate", route="clf", model="clf", version="2") == (
        pytest.approx(0.5)
    )


# ---- through the dispatcher ---------------------------------------------------------------------


def heartbeat_decisions(h: Harness) -> list[RouteDecision]:
    out = []
    for _, msg_type, header in h.frontend_messages():
        if msg_type is MsgType.HEARTBEAT:
            assert isinstance(header, HeartbeatHeader)
            out.extend(header.decisions)
    return out


def test_dispatcher_counts_replies_and_failures_of_watched_targets() -> None:
    h = Harness()
    h.announce(W1, ("clf", "1", 100))
    h.announce(W2, ("clf", "2", 100))
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(routes=[spec()]))
    h.frontend_messages()
    ok = [h.request("clf", "2") for _ in range(3)]
    bad = h.request("clf", "2")
    bad_input = h.request("clf", "2")
    h.sent()
    for rid in ok:
        h.reply(W2, rid)
    h.reply(W2, bad, status=errors.INTERNAL)
    h.reply(W2, bad_input, status=errors.INVALID_ARGUMENT)
    h.request("clf", "3")  # an unknown version: not a target, not tracked
    h.request("other", "2")
    [_, canary] = h.d.routes.target_stats(spec())
    assert (canary.count, canary.errors) == (4, 1)
    assert h.d.routes.pending == {}


def test_dispatcher_counts_expiry_and_forgets_cancelled_queued_requests() -> None:
    h = Harness()
    h.announce(W2, ("clf", "2", 1))
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(routes=[spec()]))
    h.request("clf", "2")  # takes the only credit
    queued = h.request("clf", "2", deadline_ns=h.clocks.wall_ns + 500_000_000)
    cancelled = h.request("clf", "2")
    h.d.on_cancel(FE, CancelHeader(cancelled))
    h.clocks.advance(1.0)
    h.d.tick()
    [_, canary] = h.d.routes.target_stats(spec())
    assert (canary.count, canary.errors) == (1, 1)  # the expired one
    assert (FE, queued) not in h.d.routes.pending
    assert (FE, cancelled) not in h.d.routes.pending


def test_heartbeat_answers_carry_the_decisions_even_with_a_catalog() -> None:
    h = Harness()
    h.announce(W1, ("clf", "1", 4), ("clf", "2", 4))
    h.frontend_messages()
    # A new frontend: stale generation, so the catalog goes, and the decisions with it.
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(0, routes=[spec()]))
    kinds = [t for _, t, _ in h.frontend_messages()]
    assert kinds == [MsgType.CATALOG, MsgType.HEARTBEAT]
    h.clocks.advance(1.0)
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(h.d.registry.generation, routes=[spec()]))
    [d] = heartbeat_decisions(h)
    assert (d.route, d.digest, d.canary_weight) == ("clf", "a" * 64, 10)
    # A frontend without routes gets plain heartbeats, as before.
    h.d.on_frontend_heartbeat(FE2, HeartbeatHeader(h.d.registry.generation))
    assert heartbeat_decisions(h) == []


def test_every_frontend_sees_the_same_decision() -> None:
    h = Harness()
    h.announce(W1, ("clf", "1", 1000))
    h.announce(W2, ("clf", "2", 1000))
    for fe in (FE, FE2):
        h.d.on_frontend_heartbeat(fe, HeartbeatHeader(h.d.registry.generation, routes=[spec()]))
    mix = ((FE, 300, STABLE), (FE2, 300, STABLE), (FE, 30, CANARY), (FE2, 30, CANARY))
    for fe, n, model in mix:
        for _ in range(n):
            rid = h.request(*model, frontend=fe)
            [sent] = h.sent()
            bad = model == CANARY and rid % 5 == 0
            h.reply(sent.worker, rid, frontend=fe, status=errors.INTERNAL if bad else errors.OK)
    h.frontend_messages()
    h.clocks.advance(1.0)
    h.d.tick()
    seen = []
    for fe in (FE, FE2):
        h.d.on_frontend_heartbeat(fe, HeartbeatHeader(h.d.registry.generation, routes=[spec()]))
        seen.append(heartbeat_decisions(h))
    assert seen[0] == seen[1]
    assert seen[0][0].rolled_back and seen[0][0].reason == ERROR_RATE
