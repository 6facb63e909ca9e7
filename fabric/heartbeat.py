"""Liveness of a peer and backoff between tries: the one copy every tier uses.

Any traffic counts as proof of life; silence past ``interval_s * liveness`` means dead.
Both classes take an injected clock / random source, so tests drive them without sleeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
Uniform = Callable[[float, float], float]

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3
"""Missed intervals before a peer is declared dead."""

_NEVER = float("-inf")


@dataclass
class Liveness:
    """When a peer was last heard from, and whether that is recent enough.

    ``seen_at_start``: a peer met through its own message starts alive; a peer this side
    connects to (a broker link) starts dead until it says something."""

    interval_s: float = HEARTBEAT_INTERVAL_S
    liveness: int = HEARTBEAT_LIVENESS
    clock: Clock = time.monotonic
    seen_at_start: bool = True
    last_seen: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_seen = self.clock() if self.seen_at_start else _NEVER

    @property
    def ttl_s(self) -> float:
        return self.interval_s * self.liveness

    def seen(self) -> None:
        self.last_seen = self.clock()

    def lost(self) -> None:
        """Declare the peer dead now (e.g. a send showed it is not connected)."""
        self.last_seen = _NEVER

    @property
    def expiry(self) -> float:
        return self.last_seen + self.ttl_s

    def alive(self) -> bool:
        return self.clock() < self.expiry


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter, for reconnects and retries."""

    base_s: float = 0.05
    cap_s: float = 2.0
    attempt: int = 0
    uniform: Uniform | None = None  # random.uniform (looked up at each call) when None

    def delay_s(self, attempt: int) -> float:
        """A delay for try number ``attempt`` (0-based), without changing the count."""
        uniform = self.uniform or random.uniform
        return uniform(0, min(self.cap_s, self.base_s * (2 ** min(attempt, 32))))

    def next_delay_s(self) -> float:
        delay = self.delay_s(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
