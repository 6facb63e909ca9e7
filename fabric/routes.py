"""The shared terms of a canary release: what a frontend reports, what a broker announces.

A frontend holds routes from its routing file; each one it reports to every broker it talks
to as a ``RouteSpec`` (on its heartbeats). A broker sees every reply, so it keeps per-target
outcome windows, runs the rollout clock and the rollback rule per route digest
(``broker.route_decider``), and announces a ``RouteDecision`` per digest on its heartbeat
answers. The frontend merges what its live brokers say (``frontend.route_state``): rolled back
if any broker says so, else the lowest rollout step.

The digest is the sha256 of the route's canonical JSON (``canonical_digest``): a route that
changes in the file is a new digest, whose rollout starts again and whose rollback latch is
clear. No I/O here; torch-free and grpc-free like the rest of ``fabric``.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

NO_ROLLOUT = -1
"""``RouteDecision.step`` of a route without a rollout."""


class TargetKey(msgspec.Struct, frozen=True, array_like=True):
    """One (model, version) that a route sends traffic to."""

    model: str
    version: str


class RouteSpec(msgspec.Struct, array_like=True):
    """A route as a frontend holds it, reported to the brokers (what decides its rollout).

    ``weights`` are the file's, one per target; the canary is the last target. 0 turns a
    rollback rule off (``max_error_rate_delta``, ``max_p99_ratio``); ``min_requests`` applies
    to both the canary and the stable side (every other target with weight > 0)."""

    route: str
    digest: str  # sha256 hex of the route's canonical JSON
    targets: list[TargetKey]
    weights: list[int]
    rollout_steps: list[int]  # [] = no rollout
    dwell_s: float
    window_s: float
    min_requests: int
    max_error_rate_delta: float  # 0 = rule off
    max_p99_ratio: float  # 0 = rule off


class RouteDecision(msgspec.Struct, array_like=True):
    """What a broker decided for one route digest, the same for every frontend it talks to."""

    route: str
    digest: str
    step: int  # index into rollout_steps, NO_ROLLOUT (-1) = no rollout
    canary_weight: int  # the last target's current weight (from step, or 0 after rollback)
    rolled_back: bool
    reason: str  # "" or why it was rolled back ("error_rate", "p99_latency", "inherited")


def canonical_digest(data: object) -> str:
    """sha256 hex of ``data``'s canonical JSON (sorted keys, no spaces): equal routes in any
    file, on any replica, give equal digests."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def merge_decisions(decisions: list[RouteDecision]) -> RouteDecision | None:
    """The most conservative of several brokers' decisions on one digest: rolled back if any
    says so, else the lowest rollout step (the lowest canary weight)."""
    if not decisions:
        return None
    rolled = [d for d in decisions if d.rolled_back]
    if rolled:
        return rolled[0]
    return min(decisions, key=lambda d: (d.step, d.canary_weight))


def initial_decision(spec: RouteSpec) -> RouteDecision:
    """The decision on a route no broker has announced yet: the first rollout step (or the
    file's weight without a rollout), not rolled back."""
    if spec.rollout_steps:
        return RouteDecision(spec.route, spec.digest, 0, spec.rollout_steps[0], False, "")
    canary = spec.weights[-1] if spec.weights else 0
    return RouteDecision(spec.route, spec.digest, NO_ROLLOUT, canary, False, "")


def effective_weights(spec: RouteSpec, decision: RouteDecision | None) -> list[float]:
    """Each target's weight under ``decision`` (``initial_decision`` when there is none yet).

    Rolled back: the canary (last target) gets 0, the others keep their file weights. During
    a rollout the step is the canary's percentage of the traffic, and the other targets share
    the rest in proportion to their file weights. Without a rollout the canary has its file
    weight. One definition, used by the frontend's pick and the broker's metrics alike."""
    weights = [float(w) for w in spec.weights]
    if decision is None:
        decision = initial_decision(spec)
    if not weights:
        return weights
    if decision.rolled_back:
        weights[-1] = 0.0
        return weights
    if decision.step == NO_ROLLOUT:
        weights[-1] = float(decision.canary_weight)
        return weights
    canary = float(min(100, max(0, decision.canary_weight)))
    others = sum(weights[:-1])
    rest = 100.0 - canary
    out = [w * rest / others if others else 0.0 for w in weights[:-1]]
    out.append(canary)
    return out
