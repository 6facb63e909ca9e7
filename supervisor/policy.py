"""When to restart a replica that exited, and when to give up on it: a pure decision object.

Backoff doubles from ``initial_backoff_s`` up to ``max_backoff_s`` per exit and starts again
once a replica has run ``stable_after_s`` without exiting. ``crash_loop_exits`` exits within
``crash_loop_window_s`` is a crash loop: the replica is given up on; the others keep serving.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
BACKOFF_FACTOR = 2.0
STABLE_AFTER_S = 30.0
CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW_S = 60.0


@dataclass(frozen=True)
class RestartConfig:
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    backoff_factor: float = BACKOFF_FACTOR
    stable_after_s: float = STABLE_AFTER_S
    crash_loop_exits: int = CRASH_LOOP_EXITS
    crash_loop_window_s: float = CRASH_LOOP_WINDOW_S


@dataclass(frozen=True)
class Decision:
    """What to do after one exit: restart at ``restart_at`` (monotonic), or give up."""

    give_up: bool
    restart_at: float
    delay_s: float
    exits_in_window: int


class RestartPolicy:
    """One replica's exit history. Call ``started`` when it starts, ``exited`` when it exits."""

    def __init__(self, clock: Clock, config: RestartConfig = RestartConfig()) -> None:
        self._clock = clock
        self.config = config
        self._exits: deque[float] = deque()
        self._started_at: float | None = None
        self._next_delay_s = config.initial_backoff_s
        self.restarts = 0
        self.gave_up = False

    def started(self) -> None:
        self._started_at = self._clock()

    def exited(self) -> Decision:
        now = self._clock()
        cfg = self.config
        ran_s = now - self._started_at if self._started_at is not None else 0.0
        self._started_at = None
        if ran_s >= cfg.stable_after_s:
            self._next_delay_s = cfg.initial_backoff_s
        self._exits.append(now)
        while self._exits and self._exits[0] <= now - cfg.crash_loop_window_s:
            self._exits.popleft()
        exits = len(self._exits)
        if exits >= cfg.crash_loop_exits:
            self.gave_up = True
            return Decision(True, now, 0.0, exits)
        delay = self._next_delay_s
        self._next_delay_s = min(delay * cfg.backoff_factor, cfg.max_backoff_s)
        self.restarts += 1
        return Decision(False, now + delay, delay, exits)

    def give_up(self) -> Decision:
        """Give up now whatever the history (a replica that cannot bind its port)."""
        self.gave_up = True
        return Decision(True, self._clock(), 0.0, len(self._exits))
