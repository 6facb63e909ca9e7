"""The shared terms of a canary release: the digest, the most conservative merge of several
brokers' decisions, the weights a decision gives, and the wire (routes and decisions ride on
heartbeats)."""

from __future__ import annotations

import pytest

from fabric import messages
from fabric.messages import Message
from fabric.protocol import HeartbeatHeader, MsgType
from fabric.routes import (
    NO_ROLLOUT,
    RouteDecision,
    RouteSpec,
    TargetKey,
    canonical_digest,
    effective_weights,
    initial_decision,
    merge_decisions,
)


def spec(weights: list[int], steps: list[int] | None = None) -> RouteSpec:
    targets = [TargetKey("clf", str(i + 1)) for i in range(len(weights))]
    return RouteSpec("clf", "d" * 64, targets, weights, steps or [], 1.0, 60.0, 10, 0.02, 2.0)


def decision(step: int, weight: int, rolled_back: bool = False) -> RouteDecision:
    return RouteDecision("clf", "d" * 64, step, weight, rolled_back, "x" if rolled_back else "")


def test_digest_is_canonical() -> None:
    a = {"targets": [{"model": "clf", "version": "1", "weight": 90}], "sticky": None}
    b = {"sticky": None, "targets": [{"weight": 90, "version": "1", "model": "clf"}]}
    assert canonical_digest(a) == canonical_digest(b)
    assert len(canonical_digest(a)) == 64
    b["targets"][0]["weight"] = 80  # type: ignore[index]
    assert canonical_digest(a) != canonical_digest(b)


def test_merge_takes_a_rollback_over_any_step() -> None:
    merged = merge_decisions([decision(2, 50), decision(0, 0, rolled_back=True), decision(1, 25)])
    assert merged is not None and merged.rolled_back


def test_merge_takes_the_lowest_step() -> None:
    assert merge_decisions([decision(2, 50), decision(1, 25)]) == decision(1, 25)
    assert merge_decisions([]) is None


def test_initial_decision_is_the_first_step_or_the_file_weight() -> None:
    assert initial_decision(spec([90, 10], [5, 50])) == decision(0, 5)
    assert initial_decision(spec([90, 10])) == decision(NO_ROLLOUT, 10)


def test_weights_without_a_rollout_are_the_files() -> None:
    s = spec([90, 10])
    assert effective_weights(s, None) == [90.0, 10.0]
    assert effective_weights(s, decision(NO_ROLLOUT, 10)) == [90.0, 10.0]
    assert effective_weights(s, decision(NO_ROLLOUT, 0, rolled_back=True)) == [90.0, 0.0]


def test_during_a_rollout_the_step_is_the_canarys_percentage() -> None:
    s = spec([60, 30, 10], [10, 25, 50, 100])
    assert effective_weights(s, None) == pytest.approx([60.0, 30.0, 10.0])  # step 0 = 10 %
    assert effective_weights(s, decision(2, 50)) == pytest.approx([100 / 3, 50 / 3, 50.0])
    assert effective_weights(s, decision(3, 100)) == pytest.approx([0.0, 0.0, 100.0])
    assert effective_weights(s, decision(1, 0, rolled_back=True)) == [60.0, 30.0, 0.0]


def test_routes_and_decisions_ride_on_heartbeats() -> None:
    header = HeartbeatHeader(7, 9, routes=[spec([90, 10], [10, 100])], decisions=[decision(0, 10)])
    [msg] = list(messages.iter_messages(messages.heartbeat(header), routed=False))
    assert isinstance(msg, Message) and msg.type is MsgType.HEARTBEAT
    assert msg.header == header
    assert msg.header.routes[0].targets[1] == TargetKey("clf", "2")
    # A heartbeat without routes is as small as before plus two empty lists.
    [plain] = list(messages.iter_messages(messages.heartbeat(), routed=False))
    assert isinstance(plain, Message) and plain.header == HeartbeatHeader()
