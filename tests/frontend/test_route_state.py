"""The decisions a frontend follows, merged across its live brokers: the most conservative
wins, a lost broker stops counting, only reported routes are kept, and a change of routes asks
the fabric client to report them at once."""

from __future__ import annotations

from fabric.routes import RouteDecision, RouteSpec, TargetKey
from frontend.route_state import RouteStates

A, B = "tcp://broker-a:5555", "tcp://broker-b:5555"


def spec(digest: str = "d1") -> RouteSpec:
    targets = [TargetKey("clf", "1"), TargetKey("clf", "2")]
    return RouteSpec("clf", digest, targets, [90, 10], [10, 50, 100], 1.0, 60.0, 10, 0.02, 2.0)


def decision(step: int, rolled_back: bool = False, digest: str = "d1") -> RouteDecision:
    weight = 0 if rolled_back else [10, 50, 100][step]
    return RouteDecision("clf", digest, step, weight, rolled_back, "error_rate" * rolled_back)


def test_no_decision_until_a_broker_speaks() -> None:
    states = RouteStates()
    states.report([spec()])
    assert states.decision("clf", "d1") is None
    assert states.held() == []


def test_the_lowest_step_of_the_live_brokers() -> None:
    states = RouteStates()
    states.report([spec()])
    states.update(A, [decision(2)])
    states.update(B, [decision(1)])
    assert states.decision("clf", "d1") == decision(1)
    states.broker_lost(B)
    assert states.decision("clf", "d1") == decision(2)
    assert states.held() == [decision(2)]


def test_a_rollback_from_any_broker_wins() -> None:
    states = RouteStates()
    states.report([spec()])
    states.update(A, [decision(2)])
    version = states.version
    states.update(B, [decision(0, rolled_back=True)])
    merged = states.decision("clf", "d1")
    assert merged is not None and merged.rolled_back and merged.canary_weight == 0
    assert states.version > version


def test_decisions_on_routes_not_held_are_ignored() -> None:
    states = RouteStates()
    states.report([spec("d2")])
    states.update(A, [decision(1, digest="d1"), decision(0, digest="d2")])
    assert states.decision("clf", "d1") is None
    assert states.decision("clf", "d2") == decision(0, digest="d2")
    version = states.version
    states.update(A, [decision(0, digest="d2")])  # nothing new: no version bump
    assert states.version == version


def test_a_change_of_routes_is_reported_at_once() -> None:
    states = RouteStates()
    calls: list[int] = []
    states.on_report(lambda: calls.append(len(states.specs)))
    states.report([spec("d1")])
    states.report([spec("d1")])  # the same routes: nothing to send
    states.report([spec("d2")])
    states.report([])
    assert calls == [1, 1, 0]


def test_a_decision_stays_while_no_live_broker_has_one() -> None:
    states = RouteStates()
    states.report([spec()])
    states.update(A, [decision(1)])
    states.broker_lost(A)  # it restarted: until it speaks again, follow what it said
    assert states.decision("clf", "d1") == decision(1)
    assert states.held() == [decision(1)]  # and tell it, so that it starts from there
    states.update(A, [decision(2)])
    assert states.decision("clf", "d1") == decision(2)


def test_a_rollback_stays_when_the_broker_that_decided_it_is_lost() -> None:
    states = RouteStates()
    states.report([spec()])
    states.update(A, [decision(0, rolled_back=True)])
    states.update(B, [decision(1)])
    states.broker_lost(A)
    merged = states.decision("clf", "d1")
    assert merged is not None and merged.rolled_back
    assert states.held() == [decision(0, rolled_back=True)]  # B adopts it from our heartbeat
    states.report([spec("d2")])  # the file changed: a new digest starts clean
    assert states.decision("clf", "d2") is None
