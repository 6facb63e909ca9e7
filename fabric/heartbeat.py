"""Liveness of a peer: any traffic counts as proof of life; silence past the limit means dead."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3
"""Missed intervals before a peer is declared dead."""


@dataclass
class Liveness:
    interval_s: float = HEARTBEAT_INTERVAL_S
    liveness: int = HEARTBEAT_LIVENESS
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        self.last_seen = self.clock()

    def seen(self) -> None:
        self.last_seen = self.clock()

    @property
    def expiry(self) -> float:
        return self.last_seen + self.interval_s * self.liveness

    def alive(self) -> bool:
        return self.clock() < self.expiry


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter, for reconnects and retries."""

    base_s: float = 0.05
    cap_s: float = 2.0
    attempt: int = 0

    def next_delay_s(self) -> float:
        delay = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return random.uniform(0, delay)

    def reset(self) -> None:
        self.attempt = 0
