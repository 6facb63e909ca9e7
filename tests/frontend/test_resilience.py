"""Retry decisions with a fake clock: the retry budget, which failures are retried, backoff."""

from __future__ import annotations

import random

import pytest

from fabric import errors
from frontend import resilience
from frontend.resilience import RetryBudget, RetryPolicy


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def drain(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
        assert spent < 10_000
    return spent


# ---- RetryBudget ----------------------------------------------------------------------------


def test_budget_starts_with_a_small_allowance() -> None:
    budget = RetryBudget(clock=FakeClock())
    assert drain(budget) == 10
    assert not budget.try_spend()


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.05])
def test_budget_ratio_is_respected_over_1000_requests(ratio: float) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_s=0.0, clock=clock)
    drain(budget)  # the initial allowance is spent
    retries = 0
    for _ in range(1000):
        budget.on_request()
        clock.advance(0.001)
        # Every request fails and asks for as many retries as it can get.
        retries += drain(budget)
    assert retries == pytest.approx(1000 * ratio, abs=1)
    assert retries <= 1000 * ratio


def test_budget_when_every_request_wants_one_retry() -> None:
    # The usual pattern: on_request once, try_spend once per failure.
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, clock=clock)
    granted = 0
    for _ in range(1000):
        budget.on_request()
        granted += budget.try_spend()
    # 10 from the initial allowance, then one per ten requests.
    assert 10 + 100 - 1 <= granted <= 10 + 100


def test_budget_refills_slowly_over_time_for_a_quiet_service() -> None:
    clock = FakeClock(0.0)  # binary fractions below keep the token arithmetic exact
    budget = RetryBudget(ratio=0.1, min_per_s=8.0, clock=clock)
    drain(budget)
    clock.advance(0.0625)
    assert not budget.try_spend()  # 0.5 tokens
    clock.advance(0.0625)
    assert budget.try_spend()  # 1 token after 1/8 s
    assert not budget.try_spend()
    clock.advance(1.0)
    assert drain(budget) == 8


def test_budget_is_capped() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_per_s=1.0, max_tokens=25.0, clock=clock)
    for _ in range(10_000):
        budget.on_request()
    clock.advance(3600.0)
    assert drain(budget) == 25


def test_budget_does_not_refill_without_time_passing() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=1000.0, clock=FakeClock())
    drain(budget)
    for _ in range(100):
        assert not budget.try_spend()


# ---- RetryPolicy ----------------------------------------------------------------------------


NOT_RETRYABLE = sorted(errors.STATUS_CODES - {errors.UNAVAILABLE})


@pytest.mark.parametrize("status", NOT_RETRYABLE)
def test_only_unavailable_is_retried(status: str) -> None:
    policy = RetryPolicy(max_retries=5)
    assert not policy.should_retry(status, 0, None)
    assert not policy.should_retry(status, 0, 100.0)
    assert policy.should_retry(errors.UNAVAILABLE, 0, None)


def test_retries_stop_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.should_retry(errors.UNAVAILABLE, a, 10.0) for a in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert not RetryPolicy(max_retries=0).should_retry(errors.UNAVAILABLE, 0, None)


def test_retries_need_time_left() -> None:
    policy = RetryPolicy(max_retries=3, base_backoff_s=0.02)
    assert policy.should_retry(errors.UNAVAILABLE, 0, 0.021)
    assert not policy.should_retry(errors.UNAVAILABLE, 0, 0.02)
    assert not policy.should_retry(errors.UNAVAILABLE, 0, 0.0)
    assert not policy.should_retry(errors.UNAVAILABLE, 0, -1.0)
    assert policy.should_retry(errors.UNAVAILABLE, 0, None)  # no deadline


def test_backoff_upper_bound_doubles_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience.random, "uniform", lambda lo, hi: hi)
    policy = RetryPolicy(base_backoff_s=0.02, max_backoff_s=0.5)
    delays = [policy.backoff_s(a, None) for a in range(7)]
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5])


def test_backoff_is_bounded_by_remaining_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience.random, "uniform", lambda lo, hi: hi)
    policy = RetryPolicy(base_backoff_s=0.02, max_backoff_s=0.5)
    assert policy.backoff_s(4, 0.1) == pytest.approx(0.05)  # half of what is left
    assert policy.backoff_s(4, 10.0) == pytest.approx(0.32)
    assert policy.backoff_s(0, 0.03) == pytest.approx(0.015)


def test_backoff_samples_stay_in_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience, "random", random.Random(7))
    policy = RetryPolicy(base_backoff_s=0.02, max_backoff_s=0.5)
    samples = []
    for attempt in range(8):
        for remaining in (None, 0.001, 0.05, 0.4, 5.0):
            for _ in range(50):
                delay = policy.backoff_s(attempt, remaining)
                bound = min(0.5, 0.02 * 2**attempt)
                if remaining is not None:
                    bound = min(bound, remaining / 2)
                assert 0.0 <= delay <= bound
                samples.append(delay)
    assert len(set(samples)) > len(samples) // 2  # jittered


def test_budget_never_grants_more_than_max_tokens() -> None:
    # The initial allowance (10) is above this cap; the cap wins.
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, max_tokens=2.0, clock=FakeClock())
    assert drain(budget) == 2
