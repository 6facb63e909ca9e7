"""Liveness and backoff (``fabric.heartbeat``) with a fake clock and a fake random source."""

from __future__ import annotations

import random

import pytest

from fabric import heartbeat
from fabric.heartbeat import Backoff, Liveness


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def test_liveness_defaults_are_the_named_constants() -> None:
    live = Liveness(clock=FakeClock())
    assert live.interval_s == heartbeat.HEARTBEAT_INTERVAL_S
    assert live.liveness == heartbeat.HEARTBEAT_LIVENESS
    assert live.ttl_s == heartbeat.HEARTBEAT_INTERVAL_S * heartbeat.HEARTBEAT_LIVENESS


def test_liveness_expires_after_missed_intervals() -> None:
    clock = FakeClock(50.0)
    live = Liveness(interval_s=0.5, liveness=4, clock=clock)
    assert live.last_seen == 50.0
    assert live.expiry == 52.0
    clock.advance(1.999)
    assert live.alive()
    clock.advance(0.001)  # exactly at expiry: dead
    assert not live.alive()


def test_liveness_traffic_resets_expiry() -> None:
    clock = FakeClock(0.0)
    live = Liveness(interval_s=1.0, liveness=3, clock=clock)
    clock.advance(2.5)
    live.seen()
    assert live.last_seen == 2.5
    assert live.expiry == 5.5
    clock.advance(2.9)
    assert live.alive()
    clock.advance(0.1)
    assert not live.alive()
    live.seen()  # a dead peer that speaks again is alive
    assert live.alive()


def test_a_peer_this_side_connects_to_starts_dead_until_heard() -> None:
    clock = FakeClock(10.0)
    live = Liveness(interval_s=1.0, liveness=3, clock=clock, seen_at_start=False)
    assert not live.alive()
    clock.advance(100.0)
    assert not live.alive()
    live.seen()
    assert live.alive()
    clock.advance(2.99)
    assert live.alive()


def test_lost_declares_a_peer_dead_at_once() -> None:
    clock = FakeClock()
    live = Liveness(clock=clock)
    assert live.alive()
    live.lost()
    assert not live.alive()
    live.seen()
    assert live.alive()


def test_backoff_doubles_up_to_the_cap() -> None:
    bounds: list[tuple[float, float]] = []

    def upper(lo: float, hi: float) -> float:
        bounds.append((lo, hi))
        return hi

    backoff = Backoff(base_s=0.1, cap_s=1.0, uniform=upper)
    delays = [backoff.next_delay_s() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert all(lo == 0 for lo, _ in bounds)  # full jitter
    assert backoff.attempt == 7
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay_s() == pytest.approx(0.1)


def test_delay_for_an_attempt_leaves_the_count_alone() -> None:
    backoff = Backoff(base_s=0.02, cap_s=0.5, uniform=lambda lo, hi: hi)
    assert [backoff.delay_s(a) for a in range(7)] == pytest.approx(
        [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]
    )
    assert backoff.attempt == 0


def test_backoff_uses_the_random_module_when_given_no_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeat.random, "uniform", lambda lo, hi: hi / 2)
    assert Backoff(base_s=0.1, cap_s=1.0).next_delay_s() == pytest.approx(0.05)


def test_backoff_delays_stay_within_bounds() -> None:
    backoff = Backoff(base_s=0.05, cap_s=2.0, uniform=random.Random(1234).uniform)
    delays = []
    for attempt in range(40):
        delay = backoff.next_delay_s()
        assert 0.0 <= delay <= min(2.0, 0.05 * 2**attempt)
        delays.append(delay)
    # Jittered, not constant.
    assert len(set(delays)) > 30


def test_backoff_survives_a_long_outage() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0, uniform=random.Random(99).uniform)
    for _ in range(1100):
        assert 0.0 <= backoff.next_delay_s() <= 8.0
