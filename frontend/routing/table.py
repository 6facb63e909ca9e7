"""The routes in force: public name -> route, and the resolution of one request to a target.

A request for a public name without a version is split by the route's weights (or pinned by
its sticky key); a request naming a version bypasses the split and goes where it says. The
weights in force are the file's until the broker's decision for the route (rollout step,
rollback) arrives; ``refresh`` applies the latest decisions and is called off the request
path (by the watcher, every tick), so a request costs one dict lookup and one pick.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from fabric.routes import RouteDecision, RouteSpec

from ..wire import RequestRoute
from .config import Route, RoutingFile, Shadow
from .metrics import TargetCounters
from .pick import Picker, effective_weights, target_salt

logger = logging.getLogger(__name__)

BYPASS = -1  # Resolved.index of a request that named a version no target of the route has


class DecisionSource(Protocol):
    """The shared release state (``frontend.route_state.RouteStates``): routes are reported
    to every broker, and the brokers' decisions are read back."""

    def report(self, specs: list[RouteSpec]) -> None: ...

    def decision(self, route: str, digest: str) -> RouteDecision | None: ...


@dataclass
class RouteState:
    """One route as in force now."""

    name: str
    route: Route
    digest: str
    targets: list[tuple[str, str]]
    picker: Picker
    weights: list[float]
    canary_weight: int | None  # None: the file's weights are in force
    step: int = -1  # rollout step index, -1 = none yet or no rollout
    rolled_back: bool = False
    reason: str = ""
    sticky_header: str = ""
    sticky_parameter: str = ""
    shadows: list[Shadow] = field(default_factory=list)
    by_version: dict[str, int] = field(default_factory=dict)
    counters: list[TargetCounters] = field(default_factory=list)  # per target, set by Router
    plain: list[RequestRoute] = field(default_factory=list)  # per target, for calls without id
    refused_canary: int | None = None  # a decided canary weight that left no target

    def set_canary(self, canary_weight: int | None) -> bool:
        """Puts the canary's weight in force; False (and nothing changed) when it would
        leave no target with weight."""
        weights = effective_weights([t.weight for t in self.route.targets], canary_weight)
        if not any(weights):  # nowhere to send anything: keep the weights in force
            if canary_weight != self.refused_canary:  # said once, not every tick
                logger.warning(
                    "route %s: canary weight %s leaves no target", self.name, canary_weight
                )
                self.refused_canary = canary_weight
            return False
        self.canary_weight = canary_weight
        self.weights = weights
        self.picker = Picker(weights, [target_salt(m, v) for m, v in self.targets])
        return True

    def primary(self) -> tuple[str, str]:
        """The target with the most weight now (the first of equals)."""
        best = max(range(len(self.weights)), key=lambda i: (self.weights[i], -i))
        return self.targets[best]


class Resolved(NamedTuple):
    model: str
    version: str
    slot: int  # the target's position in the route, or BYPASS


def build_state(name: str, route: Route) -> RouteState:
    targets = [(t.model, t.version) for t in route.targets]
    # Before the broker's first word on a rollout, the canary starts at the first step.
    canary = route.rollout.steps[0] if route.rollout is not None else None
    weights = effective_weights([t.weight for t in route.targets], canary)
    by_version: dict[str, int] = {}
    for i, (_, version) in enumerate(targets):
        by_version.setdefault(version, i)
    return RouteState(
        name=name,
        route=route,
        digest=route.digest(),
        targets=targets,
        picker=Picker(weights, [target_salt(m, v) for m, v in targets]),
        weights=weights,
        canary_weight=canary,
        step=0 if route.rollout is not None else -1,
        sticky_header=route.sticky.header if route.sticky else "",
        sticky_parameter=route.sticky.parameter if route.sticky else "",
        shadows=list(route.shadow),
        by_version=by_version,
        plain=[RequestRoute(m, v, "") for m, v in targets],
    )


class RoutingTable:
    def __init__(
        self,
        routing: RoutingFile,
        decisions: DecisionSource | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.routes: dict[str, RouteState] = {}
        self._decisions = decisions
        self._draw = draw
        self.load(routing)

    def load(self, routing: RoutingFile) -> None:
        """Puts a new file in force. A route whose content did not change keeps its state
        (the decision applied to it), so an edit elsewhere in the file moves nothing."""
        old = self.routes
        routes: dict[str, RouteState] = {}
        for name, route in routing.routes.items():
            prev = old.get(name)
            routes[name] = (
                prev if prev is not None and prev.route == route else build_state(name, route)
            )
        self.routes = routes
        if self._decisions is not None:
            self._decisions.report(routing.specs())
        self.refresh()

    def refresh(self) -> list[RouteState]:
        """Applies the brokers' latest decisions; returns the routes whose weights changed."""
        if self._decisions is None:
            return []
        changed = []
        for state in self.routes.values():
            d = self._decisions.decision(state.name, state.digest)
            if d is None:
                continue
            if d.rolled_back and not state.rolled_back:
                logger.warning(
                    "route %s: canary %s:%s rolled back: %s",
                    state.name,
                    *state.targets[-1],
                    d.reason,
                )
            state.step, state.rolled_back, state.reason = d.step, d.rolled_back, d.reason
            if d.canary_weight != state.canary_weight and state.set_canary(d.canary_weight):
                changed.append(state)
                logger.info("route %s: weights now %s (step %d)", state.name, state.weights, d.step)
        return changed

    def resolve(self, state: RouteState, version: str, key: bytes | None) -> Resolved:
        """Where one request for ``state``'s public name goes."""
        if version:
            i = state.by_version.get(version, BYPASS)
            if i == BYPASS:
                return Resolved(state.name, version, BYPASS)
            return Resolved(state.targets[i][0], version, i)
        i = state.picker.pick_key(key) if key is not None else state.picker.pick(self._draw())
        model, version = state.targets[i]
        return Resolved(model, version, i)
