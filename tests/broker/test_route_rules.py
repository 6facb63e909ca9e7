"""The rules of a canary release with a fake clock: outcome windows, the rollback rule (error
rate delta, p99 ratio, min_requests on both sides, a healthy canary left alone) and the rollout
clock (dwell, held, one step at a time)."""

from __future__ import annotations

import math

import pytest

from broker.route_rules import (
    ERROR_RATE,
    LATENCY_BUCKET_RATIO,
    P99_LATENCY,
    OutcomeWindow,
    RolloutClock,
    WindowStats,
    bucket_upper_s,
    has_enough_data,
    latency_bucket,
    rollback_reason,
)
from fabric.routes import NO_ROLLOUT, RouteSpec, TargetKey

T0 = 1000.0


def spec(
    *,
    min_requests: int = 100,
    max_error_rate_delta: float = 0.02,
    max_p99_ratio: float = 2.0,
    steps: list[int] | None = None,
    dwell_s: float = 10.0,
) -> RouteSpec:
    return RouteSpec(
        "clf",
        "d" * 64,
        [TargetKey("clf", "1"), TargetKey("clf", "2")],
        [90, 10],
        steps or [],
        dwell_s,
        60.0,
        min_requests,
        max_error_rate_delta,
        max_p99_ratio,
    )


def stats(count: int, errors: int = 0, latency_s: float = 0.010) -> WindowStats:
    """``count`` outcomes, ``errors`` of them errors, the rest taking ``latency_s``."""
    window = OutcomeWindow(60.0)
    for i in range(count):
        window.record(T0, error=i < errors, latency_s=latency_s)
    return window.snapshot(T0)


# ---- windows ----------------------------------------------------------------------------------


def test_window_counts_errors_and_successes() -> None:
    window = OutcomeWindow(10.0)
    for _ in range(8):
        window.record(T0, error=False, latency_s=0.005)
    for _ in range(2):
        window.record(T0, error=True)
    s = window.snapshot(T0)
    assert (s.count, s.errors) == (10, 2)
    assert s.error_rate == pytest.approx(0.2)
    assert sum(s.buckets.values()) == 8  # latencies of the successes only


def test_window_forgets_outcomes_older_than_the_window() -> None:
    window = OutcomeWindow(10.0)  # 10 slices of 1 s
    window.record(T0, error=True)
    window.record(T0 + 5.0, error=False, latency_s=0.01)
    assert window.snapshot(T0 + 9.0).count == 2
    assert window.snapshot(T0 + 10.0).count == 1  # the first slice left
    assert window.snapshot(T0 + 10.0).errors == 0
    assert window.snapshot(T0 + 15.0).count == 0


def test_window_keeps_a_bounded_number_of_slices() -> None:
    window = OutcomeWindow(1.0)
    for i in range(1000):
        window.record(T0 + i * 0.05, error=False, latency_s=0.001)
    assert len(window._slices) <= 10
    assert window.snapshot(T0 + 999 * 0.05).count in range(18, 21)  # 20 a second


def test_window_rejects_a_non_positive_length() -> None:
    with pytest.raises(ValueError):
        OutcomeWindow(0.0)


def test_latency_buckets_are_within_their_ratio() -> None:
    for latency in (0.0002, 0.0013, 0.01, 0.2, 3.7, 120.0):
        upper = bucket_upper_s(latency_bucket(latency))
        assert latency <= upper * (1 + 1e-9)
        assert upper <= latency * LATENCY_BUCKET_RATIO * (1 + 1e-9)
    assert latency_bucket(0.0) == 0
    window = OutcomeWindow(60.0)  # the window files each latency in the same bucket
    for latency in (0.0, 0.0002, 0.0013, 3.7):
        window.record(T0, error=False, latency_s=latency)
    assert set(window.snapshot(T0).buckets) == {latency_bucket(x) for x in (0, 0.0002, 0.0013, 3.7)}


def test_p99_is_the_slow_tail() -> None:
    window = OutcomeWindow(60.0)
    for i in range(1000):
        window.record(T0, error=False, latency_s=0.200 if i < 20 else 0.010)
    p99 = window.snapshot(T0).p99_s
    assert 0.200 <= p99 <= 0.200 * LATENCY_BUCKET_RATIO  # 2 % are slow: the p99 is slow
    window = OutcomeWindow(60.0)
    for i in range(1000):
        window.record(T0, error=False, latency_s=0.200 if i < 5 else 0.010)
    assert window.snapshot(T0).p99_s == pytest.approx(0.010, rel=0.06)  # 0.5 %: not the p99


def test_p99_without_successes_is_zero() -> None:
    assert stats(10, errors=10).p99_s == 0.0
    assert WindowStats().p99_s == 0.0


def test_stats_add_merges_histograms() -> None:
    a = stats(100, errors=1, latency_s=0.01)
    a.add(stats(100, errors=3, latency_s=0.02))
    assert (a.count, a.errors) == (200, 4)
    assert a.p99_s == pytest.approx(0.02, rel=0.06)


# ---- the rollback rule ----------------------------------------------------------------------


def test_error_rate_over_the_delta_rolls_back() -> None:
    assert rollback_reason(stats(200, errors=40), stats(800, errors=8), spec()) == ERROR_RATE


def test_error_rate_within_the_delta_does_not() -> None:
    # 2.5 % against 1 %: a delta of 1.5 points, under the 2 allowed.
    assert rollback_reason(stats(200, errors=5), stats(800, errors=8), spec()) is None


def test_p99_over_the_ratio_rolls_back() -> None:
    canary = stats(200, latency_s=0.210)
    stable = stats(800, latency_s=0.010)
    assert rollback_reason(canary, stable, spec()) == P99_LATENCY


def test_p99_within_the_ratio_does_not() -> None:
    canary = stats(200, latency_s=0.018)
    stable = stats(800, latency_s=0.010)
    assert rollback_reason(canary, stable, spec()) is None


def test_a_healthy_canary_is_not_rolled_back() -> None:
    assert rollback_reason(stats(500, errors=1), stats(4500, errors=9), spec()) is None


@pytest.mark.parametrize(("canary_n", "stable_n"), [(99, 1000), (1000, 99), (0, 0)])
def test_min_requests_applies_to_both_sides(canary_n: int, stable_n: int) -> None:
    canary = stats(canary_n, errors=canary_n // 2, latency_s=1.0)
    stable = stats(stable_n, latency_s=0.01)
    assert not has_enough_data(canary, stable, spec())
    assert rollback_reason(canary, stable, spec()) is None
    # With enough on both sides the same rates do roll back.
    assert rollback_reason(stats(100, errors=50), stats(100), spec()) == ERROR_RATE


def test_zero_min_requests_still_needs_one_outcome_per_side() -> None:
    assert rollback_reason(stats(5, errors=5), WindowStats(), spec(min_requests=0)) is None
    assert rollback_reason(stats(5, errors=5), stats(1), spec(min_requests=0)) == ERROR_RATE


def test_a_zero_threshold_turns_its_rule_off() -> None:
    failing = stats(200, errors=100, latency_s=1.0)
    stable = stats(800, latency_s=0.01)
    off = spec(max_error_rate_delta=0.0, max_p99_ratio=0.0)
    assert rollback_reason(failing, stable, off) is None
    only_p99 = spec(max_error_rate_delta=0.0)
    assert rollback_reason(failing, stable, only_p99) == P99_LATENCY


# ---- the rollout clock ------------------------------------------------------------------------


def test_rollout_walks_its_steps_after_each_dwell() -> None:
    clock = RolloutClock([10, 25, 50, 100], 5.0, T0)
    assert (clock.step, clock.weight) == (0, 10)
    assert not clock.advance(T0 + 4.9, held=False)
    assert clock.advance(T0 + 5.0, held=False)
    assert (clock.step, clock.weight) == (1, 25)
    assert not clock.advance(T0 + 9.9, held=False)  # the dwell counts from the step's start
    assert clock.advance(T0 + 10.0, held=False)
    assert clock.advance(T0 + 15.0, held=False)
    assert (clock.step, clock.weight, clock.done) == (3, 100, True)
    assert not clock.advance(T0 + 1000.0, held=False)


def test_rollout_never_skips_a_step_when_called_late() -> None:
    clock = RolloutClock([10, 25, 50], 1.0, T0)
    assert clock.advance(T0 + 100.0, held=False)
    assert clock.step == 1
    assert not clock.advance(T0 + 100.5, held=False)  # a new dwell for step 1


def test_a_held_rollout_waits_and_then_advances() -> None:
    clock = RolloutClock([10, 50], 2.0, T0)
    assert not clock.advance(T0 + 3.0, held=True)
    assert clock.due(T0 + 3.0)
    assert clock.step == 0
    assert clock.advance(T0 + 8.0, held=False)
    assert clock.step == 1


def test_no_rollout() -> None:
    clock = RolloutClock([], 1.0, T0)
    assert (clock.step, clock.weight, clock.done) == (NO_ROLLOUT, None, True)
    assert not clock.advance(T0 + 100.0, held=False)


def test_a_start_step_is_clamped() -> None:
    assert RolloutClock([10, 50], 1.0, T0, start_step=7).step == 1
    assert RolloutClock([10, 50], 1.0, T0, start_step=-3).step == 0
    assert math.isclose(RolloutClock([10], -1.0, T0).dwell_s, 0.0)
