"""A logger for lines that a peer on the network can cause at will (malformed messages, refused
announcements): it keeps the log readable and bounded however much such traffic arrives.

In each window of ``interval_s``, the first ``per_key`` lines of each key (a peer, usually) are
logged, and at most ``total`` lines in all; the rest are only counted. When a window in which
lines were held back ends, one summary line says how many and from how many keys. The clock is
injected, so tests drive it; no I/O beyond the wrapped logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PER_KEY_LINES = 5
TOTAL_LINES = 50
WINDOW_S = 10.0
MAX_KEYS_TRACKED = 1024
"""Distinct keys counted per window; more (an attacker cycling identities) share one budget."""
_OVERFLOW_KEY = "<other peers>"


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        per_key: int = PER_KEY_LINES,
        total: int = TOTAL_LINES,
        interval_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._per_key = per_key
        self._total = total
        self._interval_s = interval_s
        self._clock = clock
        self._window_start = clock()
        self._lines: dict[str, int] = {}
        self._logged = 0
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` (or everyone) used up this window's
        lines; True when it was logged."""
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        self.flush()
        if key not in self._lines and len(self._lines) >= MAX_KEYS_TRACKED:
            key = _OVERFLOW_KEY
        n = self._lines.get(key, 0)
        if n >= self._per_key or self._logged >= self._total:
            if key in self._held or len(self._held) < MAX_KEYS_TRACKED:
                self._held[key] = self._held.get(key, 0) + 1
            else:
                self._held[_OVERFLOW_KEY] = self._held.get(_OVERFLOW_KEY, 0) + 1
            return False
        self._lines[key] = n + 1
        self._logged += 1
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True

    @property
    def held_back(self) -> int:
        """Lines not logged in the current window."""
        return sum(self._held.values())

    def flush(self) -> None:
        """Close the window when it is over: one summary line if anything was held back."""
        now = self._clock()
        if now - self._window_start < self._interval_s:
            return
        if self._held:
            self._logger.warning(
                "%d more %s from %d peers not logged in the last %.0f s",
                sum(self._held.values()),
                self._what,
                len(self._held),
                now - self._window_start,
            )
        self._window_start = now
        self._lines.clear()
        self._held.clear()
        self._logged = 0
