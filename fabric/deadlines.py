"""Absolute wall-clock deadlines on the wire, monotonic time inside a process."""

from __future__ import annotations

import time

NO_DEADLINE = 0


def deadline_from_timeout(timeout_s: float | None) -> int:
    """The wire deadline (``time.time_ns()`` based) for a timeout from now; 0 means none."""
    if timeout_s is None:
        return NO_DEADLINE
    return time.time_ns() + int(timeout_s * 1e9)


def remaining_s(deadline_ns: int) -> float | None:
    """Seconds left until the wire deadline (negative once passed); None when there is none."""
    if deadline_ns == NO_DEADLINE:
        return None
    return (deadline_ns - time.time_ns()) / 1e9


def expired(deadline_ns: int) -> bool:
    return deadline_ns != NO_DEADLINE and time.time_ns() >= deadline_ns


def to_monotonic(deadline_ns: int) -> float | None:
    """The deadline on this process's monotonic clock, or None when there is none."""
    if deadline_ns == NO_DEADLINE:
        return None
    return time.monotonic() + (deadline_ns - time.time_ns()) / 1e9
