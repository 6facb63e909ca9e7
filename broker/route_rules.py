"""The rules of a canary release, without I/O: outcome windows, the rollback rule, the rollout
clock. ``route_decider.py`` drives them per route digest; tests drive them with a fake clock.

* ``OutcomeWindow``: a sliding window of one target's outcomes (calls, errors, latencies in
  log-spaced buckets), kept as ``SLICES`` time slices so that recording is O(1) and old
  outcomes fall out a slice at a time. ``snapshot`` gives ``WindowStats`` (count, error rate,
  p99), which merge across targets (the stable side is every non-canary target).
* ``rollback_reason``: why the canary must go (error-rate delta or p99 ratio over the stable
  side), or None; it never decides on fewer than ``min_requests`` outcomes on either side.
* ``RolloutClock``: the canary's weight walks ``rollout_steps``, each held at least ``dwell_s``,
  and advances only when the caller says the step is not held.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from fabric.routes import NO_ROLLOUT, RouteSpec

SLICES = 10
"""Time slices per window: outcomes leave the window a tenth of it at a time."""
LATENCY_FLOOR_S = 1e-4
"""Latencies at or under this share the first bucket."""
LATENCY_BUCKET_RATIO = 1.05
"""Each latency bucket is 5 % wider than the one before: p99 is known within 5 %, and
100 µs .. 1 h fits in about 360 buckets (a slice holds only the buckets it saw)."""
_LOG_RATIO = math.log(LATENCY_BUCKET_RATIO)
P99 = 0.99

ERROR_RATE = "error_rate"
P99_LATENCY = "p99_latency"


def latency_bucket(latency_s: float) -> int:
    if latency_s <= LATENCY_FLOOR_S:
        return 0
    return int(math.log(latency_s / LATENCY_FLOOR_S) / _LOG_RATIO) + 1


def bucket_upper_s(bucket: int) -> float:
    """The largest latency in ``bucket`` (what a percentile in it is reported as)."""
    return LATENCY_FLOOR_S * LATENCY_BUCKET_RATIO**bucket


@dataclass
class WindowStats:
    """Outcomes of one or more targets over a window. ``count`` counts calls that ended OK or
    with an error that counts; ``buckets`` hold the latencies of the OK ones."""

    count: int = 0
    errors: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def p99_s(self) -> float:
        """The 99th percentile latency of the successful calls (0 when there were none)."""
        total = sum(self.buckets.values())
        if not total:
            return 0.0
        rank = math.ceil(P99 * total)
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return bucket_upper_s(bucket)
        return bucket_upper_s(max(self.buckets))  # unreachable: seen reaches total

    def add(self, other: WindowStats) -> None:
        self.count += other.count
        self.errors += other.errors
        for bucket, n in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n


@dataclass
class _Slice:
    index: int  # floor(time / slice_s)
    stats: WindowStats = field(default_factory=WindowStats)


class OutcomeWindow:
    """The last ``window_s`` seconds of one target's outcomes (to within one slice: a snapshot
    covers between ``window_s * (SLICES - 1) / SLICES`` and ``window_s`` of history)."""

    def __init__(self, window_s: float, slices: int = SLICES) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._slice_s = window_s / slices
        self._slices_kept = slices
        self._slices: deque[_Slice] = deque()

    def record(self, now: float, error: bool, latency_s: float | None = None) -> None:
        """One outcome: an error, or a success that took ``latency_s``."""
        index = int(now // self._slice_s)
        slices = self._slices
        if not slices or slices[-1].index != index:
            self._expire(index)
            slices.append(_Slice(index))
        stats = slices[-1].stats
        stats.count += 1
        if error:
            stats.errors += 1
        elif latency_s is not None:
            # latency_bucket inlined: this runs once per routed reply.
            if latency_s <= LATENCY_FLOOR_S:
                bucket = 0
            else:
                bucket = int(math.log(latency_s / LATENCY_FLOOR_S) / _LOG_RATIO) + 1
            buckets = stats.buckets
            buckets[bucket] = buckets.get(bucket, 0) + 1

    def snapshot(self, now: float) -> WindowStats:
        self._expire(int(now // self._slice_s))
        out = WindowStats()
        for s in self._slices:
            out.add(s.stats)
        return out

    def _expire(self, index: int) -> None:
        slices = self._slices
        while slices and slices[0].index <= index - self._slices_kept:
            slices.popleft()


def has_enough_data(canary: WindowStats, stable: WindowStats, spec: RouteSpec) -> bool:
    """Both sides have at least ``min_requests`` outcomes (and at least one: a rule never
    compares against nothing)."""
    least = max(1, spec.min_requests)
    return canary.count >= least and stable.count >= least


def rollback_reason(canary: WindowStats, stable: WindowStats, spec: RouteSpec) -> str | None:
    """``ERROR_RATE`` or ``P99_LATENCY`` when the canary must be rolled back, else None (also
    when either side has too few outcomes to judge)."""
    if not has_enough_data(canary, stable, spec):
        return None
    delta = spec.max_error_rate_delta
    if delta > 0 and canary.error_rate - stable.error_rate > delta:
        return ERROR_RATE
    ratio = spec.max_p99_ratio
    if ratio > 0:
        stable_p99 = stable.p99_s
        if stable_p99 > 0 and canary.p99_s > ratio * stable_p99:
            return P99_LATENCY
    return None


def rules_on(spec: RouteSpec) -> bool:
    return spec.max_error_rate_delta > 0 or spec.max_p99_ratio > 0


class RolloutClock:
    """Where the canary's weight is in ``rollout_steps``: step 0 from ``epoch``, the next one
    once the current one was held ``dwell_s`` and ``advance`` is told it is not held. One step
    per call at most, so a step is never skipped however late the call comes."""

    def __init__(self, steps: list[int], dwell_s: float, epoch: float, start_step: int = 0):
        self.steps = steps
        self.dwell_s = max(0.0, dwell_s)
        self.step = min(max(0, start_step), len(steps) - 1) if steps else NO_ROLLOUT
        self.since = epoch  # when the current step began

    @property
    def done(self) -> bool:
        return self.step == NO_ROLLOUT or self.step == len(self.steps) - 1

    @property
    def weight(self) -> int | None:
        """The canary's weight at this step (None without a rollout)."""
        return None if self.step == NO_ROLLOUT else self.steps[self.step]

    def due(self, now: float) -> bool:
        """The current step has been held for its dwell and a next one exists."""
        return not self.done and now - self.since >= self.dwell_s

    def advance(self, now: float, held: bool) -> bool:
        """Move to the next step if it is due and not ``held``; True when it moved."""
        if held or not self.due(now):
            return False
        self.step += 1
        self.since = now
        return True
