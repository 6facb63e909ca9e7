"""One rollout and rollback decision per route, from the traffic of every frontend: no I/O.

Frontends report the routes they hold (``RouteSpec``, on their heartbeats); the dispatcher
tells this object when a request for a watched target (model, version) is admitted and how
it ended. Per target it keeps outcome windows (``route_rules.OutcomeWindow``); once per tick
it runs each route digest's rollback rule and rollout clock, and the dispatcher announces
``decisions_for`` each frontend on its heartbeat answers.

What counts: OK (with its latency, broker admission to reply, queueing included) and the
errors INTERNAL, UNAVAILABLE, ABORTED (worker lost) and DEADLINE_EXCEEDED (the target did
not answer within the caller's deadline: the stable side shares the same deadlines, so only
a real difference shows). The caller's own INVALID_ARGUMENT and CANCELLED, NOT_FOUND and
RESOURCE_EXHAUSTED (load shedding before dispatch) are not counted at all.

A digest's epoch is when this broker first heard of it; a rollback latches until the digest
disappears (the file changed and no frontend reports it for ``ROUTE_FORGET_S``). Frontends
send back the decisions they follow: a digest this broker does not know yet (it restarted)
starts from that decision, and a rollback another broker decided latches here too, so that
neither a restart nor the loss of a broker brings a rolled-back canary back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from fabric import errors
from fabric.protocol import PeerId, RequestId
from fabric.ratelog import RateLimitedLog
from fabric.routes import NO_ROLLOUT, RouteDecision, RouteSpec

from .route_rules import (
    OutcomeWindow,
    RolloutClock,
    WindowStats,
    has_enough_data,
    rollback_reason,
    rules_on,
)

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]
RequestKey = tuple[PeerId, RequestId]

ERROR_STATUSES = frozenset(
    {errors.INTERNAL, errors.UNAVAILABLE, errors.ABORTED, errors.DEADLINE_EXCEEDED}
)
DEFAULT_WINDOW_S = 60.0
"""Window of a route reported without one (a rollout without rollback rules)."""
MIN_WINDOW_S = 0.5
MAX_WINDOW_S = 3600.0
ROUTE_FORGET_S = 300.0
"""A digest no frontend reported for this long is forgotten (its latch and rollout with it)."""
MAX_ROUTES_PER_FRONTEND = 256
MAX_DIGESTS = 1024
MAX_TARGETS = 64
MAX_STEPS = 64
MAX_NAME_CHARS = 256
MAX_PENDING = 1_000_000
"""Requests tracked at once; past it new ones go uncounted (never more memory)."""
PENDING_MAX_AGE_S = 600.0
"""A tracked request older than this whose end was never seen is dropped from tracking."""
INHERITED = "inherited"


@dataclass
class RouteState:
    spec: RouteSpec
    epoch: float  # when this broker first heard of the digest
    clock: RolloutClock
    last_reported: float
    rolled_back: bool = False
    reason: str = ""
    held: bool = False  # the rollout waits for min_requests on both sides

    def decision(self) -> RouteDecision:
        spec = self.spec
        if self.rolled_back:
            weight = 0
        elif self.clock.step != NO_ROLLOUT:
            weight = spec.rollout_steps[self.clock.step]
        else:
            weight = spec.weights[-1]
        return RouteDecision(
            spec.route, spec.digest, self.clock.step, weight, self.rolled_back, self.reason
        )


@dataclass(frozen=True)
class RollbackKey:
    route: str
    model: str
    version: str
    reason: str


class RouteDecider:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.routes: dict[str, RouteState] = {}  # by digest
        self.watched: set[ModelKey] = set()  # every target of every route
        self.pending: dict[RequestKey, tuple[ModelKey, float]] = {}
        self.rollbacks: dict[RollbackKey, int] = {}  # cumulative, for the metrics
        self._windows: dict[ModelKey, list[OutcomeWindow]] = {}
        self._reported: dict[PeerId, list[str]] = {}  # digests per frontend
        self._bad_log = RateLimitedLog(logger, "invalid route reports")

    # ---- per request (the hot path: a dict insert and a pop) ---------------------------------
    def start(self, rkey: RequestKey, key: ModelKey) -> None:
        """A request for a watched target was admitted."""
        if len(self.pending) < MAX_PENDING:
            self.pending[rkey] = (key, self._clock())

    def finish(self, rkey: RequestKey, status: str) -> None:
        """A tracked request was answered with ``status``."""
        entry = self.pending.pop(rkey, None)
        if entry is None:
            return
        if status == errors.OK:
            error = False
        elif status in ERROR_STATUSES:
            error = True
        else:
            return  # the caller's doing, or load shedding: says nothing of the target
        key, started = entry
        now = self._clock()
        for window in self._windows.get(key, ()):
            window.record(now, error, now - started)

    def forget(self, rkey: RequestKey) -> None:
        """A tracked request ended without an answer (cancelled while queued)."""
        self.pending.pop(rkey, None)

    # ---- reports ----------------------------------------------------------------------------
    def report(
        self, frontend: PeerId, specs: Sequence[RouteSpec], held: Sequence[RouteDecision] = ()
    ) -> None:
        """The routes ``frontend`` holds now; ``held``: the decisions it holds for them, which
        seed a digest this broker has not seen."""
        if not specs and frontend not in self._reported:
            return
        now = self._clock()
        seeds = {d.digest: d for d in held}
        digests: list[str] = []
        added = False
        for raw in specs[:MAX_ROUTES_PER_FRONTEND]:
            state = self.routes.get(raw.digest)
            if state is not None:
                self._adopt_rollback(state, seeds.get(raw.digest))
            else:
                spec = self._valid(frontend, raw)
                if spec is None:
                    continue
                if len(self.routes) >= MAX_DIGESTS:
                    self._bad_log.warning(
                        frontend.hex(), "route %r not tracked: %d digests already", spec.route,
                        MAX_DIGESTS,
                    )  # fmt: skip
                    continue
                state = self._new_state(spec, now, seeds.get(spec.digest))
                self.routes[spec.digest] = state
                added = True
            state.last_reported = now
            digests.append(raw.digest)
        self._reported[frontend] = digests
        if added:
            self._rebuild_windows()

    def _adopt_rollback(self, state: RouteState, held: RouteDecision | None) -> None:
        """A frontend holds a rollback of this digest (another broker decided it): latch it
        here too, so that every broker agrees whichever of them is lost later."""
        if held is None or not held.rolled_back or state.rolled_back:
            return
        state.rolled_back = True
        state.reason = held.reason or INHERITED
        logger.info(
            "route %s digest %s: rolled back (%s) as a frontend holds it",
            state.spec.route, state.spec.digest[:12], state.reason,
        )  # fmt: skip

    def forget_frontend(self, frontend: PeerId) -> None:
        self._reported.pop(frontend, None)

    def decisions_for(self, frontend: PeerId) -> list[RouteDecision]:
        """The decisions on the routes ``frontend`` reported last."""
        routes = self.routes
        return [routes[d].decision() for d in self._reported.get(frontend, ()) if d in routes]

    def _valid(self, frontend: PeerId, spec: RouteSpec) -> RouteSpec | None:
        """``spec`` with its window defaulted, or None (logged) when it makes no sense."""
        why = _invalid(spec)
        if why:
            self._bad_log.warning(
                frontend.hex(), "route %r from frontend %s ignored: %s", spec.route[:64],
                frontend.hex(), why,
            )  # fmt: skip
            return None
        window_s = spec.window_s
        if not math.isfinite(window_s) or window_s <= 0:
            window_s = DEFAULT_WINDOW_S
        return msgspec.structs.replace(
            spec, window_s=min(MAX_WINDOW_S, max(MIN_WINDOW_S, window_s))
        )

    def _new_state(self, spec: RouteSpec, now: float, seed: RouteDecision | None) -> RouteState:
        start = seed.step if seed is not None and seed.step >= 0 else 0
        state = RouteState(
            spec, now, RolloutClock(spec.rollout_steps, spec.dwell_s, now, start), now
        )
        if seed is not None and seed.rolled_back:
            state.rolled_back = True
            state.reason = seed.reason or INHERITED
        logger.info(
            "route %s digest %s: tracking %d targets, step %d%s",
            spec.route, spec.digest[:12], len(spec.targets), state.clock.step,
            ", rolled back (as a frontend holds it)" if state.rolled_back else "",
        )  # fmt: skip
        return state

    # ---- time -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Run every route's rollback rule and rollout clock; forget what nobody reports."""
        now = self._clock()
        stale = [d for d, s in self.routes.items() if now - s.last_reported > ROUTE_FORGET_S]
        for digest in stale:
            state = self.routes.pop(digest)
            logger.info("route %s digest %s: no longer reported", state.spec.route, digest[:12])
        if stale:
            self._rebuild_windows()
        for state in self.routes.values():
            self._evaluate(state, now)
        self._purge_pending(now)
        self._bad_log.flush()

    def sides(self, spec: RouteSpec, now: float | None = None) -> tuple[WindowStats, WindowStats]:
        """(canary, stable) outcomes over the route's window."""
        now = self._clock() if now is None else now
        canary_key = _key(spec, len(spec.targets) - 1)
        canary = self._stats(canary_key, spec.window_s, now)
        stable = WindowStats()
        for i in range(len(spec.targets) - 1):
            key = _key(spec, i)
            if spec.weights[i] > 0 and key != canary_key:
                stable.add(self._stats(key, spec.window_s, now))
        return canary, stable

    def target_stats(self, spec: RouteSpec) -> list[WindowStats]:
        """Each target's outcomes over the route's window, in the route's order."""
        now = self._clock()
        return [self._stats(_key(spec, i), spec.window_s, now) for i in range(len(spec.targets))]

    def _evaluate(self, state: RouteState, now: float) -> None:
        if state.rolled_back:
            return
        spec = state.spec
        if not rules_on(spec):
            state.held = False
            if state.clock.advance(now, held=False):
                self._log_step(state)
            return
        canary, stable = self.sides(spec, now)
        reason = rollback_reason(canary, stable, spec)
        if reason is not None:
            self._roll_back(state, reason, canary, stable)
            return
        state.held = not has_enough_data(canary, stable, spec)
        if state.clock.advance(now, state.held):
            self._log_step(state)

    def _roll_back(
        self, state: RouteState, reason: str, canary: WindowStats, stable: WindowStats
    ) -> None:
        state.rolled_back = True
        state.reason = reason
        spec = state.spec
        target = spec.targets[-1]
        key = RollbackKey(spec.route, target.model, target.version, reason)
        self.rollbacks[key] = self.rollbacks.get(key, 0) + 1
        # One line, key=value, that names the route, the target, the rule and its numbers.
        logger.warning(
            "route rollback: route=%s digest=%s model=%s version=%s rule=%s window_s=%g "
            "canary_requests=%d canary_errors=%d canary_error_rate=%.4f canary_p99_ms=%.1f "
            "stable_requests=%d stable_errors=%d stable_error_rate=%.4f stable_p99_ms=%.1f "
            "min_requests=%d max_error_rate_delta=%g max_p99_ratio=%g step=%d",
            spec.route, spec.digest[:12], target.model, target.version, reason, spec.window_s,
            canary.count, canary.errors, canary.error_rate, canary.p99_s * 1000,
            stable.count, stable.errors, stable.error_rate, stable.p99_s * 1000,
            spec.min_requests, spec.max_error_rate_delta, spec.max_p99_ratio, state.clock.step,
        )  # fmt: skip

    def _log_step(self, state: RouteState) -> None:
        spec = state.spec
        logger.info(
            "route rollout: route=%s digest=%s model=%s version=%s step=%d weight=%s",
            spec.route, spec.digest[:12], spec.targets[-1].model, spec.targets[-1].version,
            state.clock.step, state.clock.weight,
        )  # fmt: skip

    def _purge_pending(self, now: float) -> None:
        """Drop tracked requests whose end was never seen (oldest first: insertion order)."""
        pending = self.pending
        while pending:
            rkey, (_, started) = next(iter(pending.items()))
            if now - started < PENDING_MAX_AGE_S:
                return
            del pending[rkey]

    # ---- windows ----------------------------------------------------------------------------
    def _stats(self, key: ModelKey, window_s: float, now: float) -> WindowStats:
        for window in self._windows.get(key, ()):
            if window.window_s == window_s:
                return window.snapshot(now)
        return WindowStats()

    def _rebuild_windows(self) -> None:
        """One window per (target, window length) that some route uses; kept ones keep their
        outcomes."""
        wanted: dict[ModelKey, set[float]] = {}
        for state in self.routes.values():
            spec = state.spec
            for i in range(len(spec.targets)):
                wanted.setdefault(_key(spec, i), set()).add(spec.window_s)
        windows: dict[ModelKey, list[OutcomeWindow]] = {}
        for key, lengths in wanted.items():
            old = {w.window_s: w for w in self._windows.get(key, ())}
            windows[key] = [old.get(s) or OutcomeWindow(s) for s in sorted(lengths)]
        self._windows = windows
        self.watched = set(windows)


def _key(spec: RouteSpec, index: int) -> ModelKey:
    target = spec.targets[index]
    return (target.model, target.version)


def _invalid(spec: RouteSpec) -> str:
    """Why a reported spec cannot be used ("" when it can)."""
    if not spec.route or len(spec.route) > MAX_NAME_CHARS:
        return "bad route name"
    if not spec.digest or len(spec.digest) > MAX_NAME_CHARS:
        return "bad digest"
    if not spec.targets or len(spec.targets) > MAX_TARGETS:
        return f"{len(spec.targets)} targets (1..{MAX_TARGETS})"
    if len(spec.weights) != len(spec.targets):
        return f"{len(spec.weights)} weights for {len(spec.targets)} targets"
    if any(w < 0 for w in spec.weights):
        return "a negative weight"
    if len(spec.rollout_steps) > MAX_STEPS or any(not 0 <= s <= 100 for s in spec.rollout_steps):
        return f"rollout steps must be at most {MAX_STEPS} percentages"
    numbers = (spec.dwell_s, spec.max_error_rate_delta, spec.max_p99_ratio)
    if any(not math.isfinite(x) or x < 0 for x in numbers) or spec.min_requests < 0:
        return "a negative or non-finite dwell, threshold or min_requests"
    return ""
