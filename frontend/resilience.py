"""Retry decisions without I/O: a retry budget and capped exponential backoff with full jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fabric.errors import RETRYABLE
from fabric.heartbeat import Backoff

STARTING_RETRY_TOKENS = 10.0
"""Retries a fresh frontend may make before its traffic has earned any (its first failures)."""


@dataclass
class RetryBudget:
    """Retries may add at most ``ratio`` extra load: each request earns ``ratio`` tokens, each
    retry spends one. ``min_per_s`` tokens a second keep a quiet service able to retry."""

    ratio: float = 0.1
    min_per_s: float = 10.0
    max_tokens: float = 100.0
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(default=STARTING_RETRY_TOKENS, init=False)
    _last: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.max_tokens, self._tokens + (now - self._last) * self.min_per_s)
        self._last = now

    def on_request(self) -> None:
        self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_backoff_s: float = 0.02
    max_backoff_s: float = 0.5

    def should_retry(self, status: str, attempt: int, remaining_s: float | None) -> bool:
        """Retry only failures that say nothing about the request, with time left for it."""
        if status not in RETRYABLE or attempt >= self.max_retries:
            return False
        return remaining_s is None or remaining_s > self.base_backoff_s

    def backoff_s(
        self, attempt: int, remaining_s: float | None, rng: random.Random | None = None
    ) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], and at most half the time
        left so that the retry still has time to run. ``rng`` defaults to the module's."""
        backoff = Backoff(
            self.base_backoff_s, self.max_backoff_s, uniform=rng.uniform if rng else None
        )
        delay = backoff.delay_s(attempt)
        if remaining_s is not None:
            delay = min(delay, remaining_s / 2)
        return delay
