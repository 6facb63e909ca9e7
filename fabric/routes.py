"""Routing state shared by frontends and brokers (issue 12): what a frontend reports about each
route of its routing file, and what the broker decides for it."""

from __future__ import annotations

import msgspec


class TargetKey(msgspec.Struct, frozen=True, array_like=True):
    model: str
    version: str


class RouteSpec(msgspec.Struct, array_like=True):
    """What a frontend reports to the broker about one route of its routing file."""

    route: str
    digest: str  # sha256 hex of the route's canonical JSON
    targets: list[TargetKey]
    weights: list[int]
    rollout_steps: list[int]
    dwell_s: float
    window_s: float
    min_requests: int
    max_error_rate_delta: float  # 0 = rule off
    max_p99_ratio: float  # 0 = rule off


class RouteDecision(msgspec.Struct, array_like=True):
    """What the broker announces about one route."""

    route: str
    digest: str
    step: int  # index into rollout_steps, -1 = no rollout
    canary_weight: int  # the last target's current weight (from step, or 0 after rollback)
    rolled_back: bool
    reason: str
