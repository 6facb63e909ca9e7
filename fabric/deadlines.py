"""Absolute wall-clock deadlines on the wire, monotonic time inside a process."""

from __future__ import annotations

import time

NO_DEADLINE = 0


def to_monotonic(deadline_ns: int) -> float | None:
    """The deadline on this process's monotonic clock, or None when there is none."""
    if deadline_ns == NO_DEADLINE:
        return None
    return time.monotonic() + (deadline_ns - time.time_ns()) / 1e9
