"""Dynamic batching decisions, without I/O or threads: which waiting requests run together, when.

Requests join in arrival order. A batch is cut from the group of the oldest request (only
requests with the same batch signature, i.e. the same non-batch shapes and dtypes, are mixed):
- when the group holds ``max_batch_size`` rows, or a preferred batch size can be cut exactly, or
- when the oldest request has waited ``max_queue_delay_us`` (0, the default, cuts at once), or
- at once when the model instance is idle and the policy says ``dispatch_when_idle`` (waiting
  would only add latency: batches grow by themselves while the model is the slow stage).
A model that does not batch (``max_batch_size`` 0) runs each request alone, at once.
A cut takes the largest preferred size that fits when one does, else as many rows as fit.
Requests whose deadline has passed, or that were cancelled, never join a batch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Waiting(Generic[T]):
    item: T
    key: Hashable  # cancellation key
    rows: int
    signature: Hashable
    arrived_s: float
    deadline_s: float | None  # monotonic, None = none


@dataclass
class BatchPolicy:
    max_batch_size: int  # rows; 0 = the model does not batch: one request at a time
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    dispatch_when_idle: bool = True

    @property
    def max_rows(self) -> int:
        return max(1, self.max_batch_size)


@dataclass
class Batcher(Generic[T]):
    policy: BatchPolicy
    clock: Callable[[], float]
    _waiting: list[Waiting[T]] = field(default_factory=list)
    # Kept up to date on every change so the compute loop's checks cost O(1).
    _rows: int = 0
    _signatures: Counter[Hashable] = field(default_factory=Counter)
    _earliest_deadline_s: float = math.inf  # a lower bound: no deadline passes before it

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def mixed(self) -> bool:
        """True when requests that cannot share a batch are waiting together."""
        return len(self._signatures) > 1

    def add(self, w: Waiting[T]) -> None:
        self._waiting.append(w)
        self._rows += w.rows
        self._signatures[w.signature] += 1
        if w.deadline_s is not None and w.deadline_s < self._earliest_deadline_s:
            self._earliest_deadline_s = w.deadline_s

    def _forget(self, gone: list[Waiting[T]]) -> None:
        for w in gone:
            self._rows -= w.rows
            self._signatures[w.signature] -= 1
            if not self._signatures[w.signature]:
                del self._signatures[w.signature]

    def cancel(self, key: Hashable) -> Waiting[T] | None:
        for i, w in enumerate(self._waiting):
            if w.key == key:
                self._forget([w])
                return self._waiting.pop(i)
        return None

    def expire(self) -> list[Waiting[T]]:
        """Remove and return requests whose deadline has passed."""
        now = self.clock()
        if now < self._earliest_deadline_s:
            return []
        dead = [w for w in self._waiting if w.deadline_s is not None and w.deadline_s <= now]
        if dead:
            gone = {id(w) for w in dead}
            self._waiting = [w for w in self._waiting if id(w) not in gone]
            self._forget(dead)
        self._earliest_deadline_s = min(
            (w.deadline_s for w in self._waiting if w.deadline_s is not None), default=math.inf
        )
        return dead

    def next_batch(
        self, idle: bool = True, drain: bool = False
    ) -> tuple[list[Waiting[T]], float | None]:
        """(batch to run now, None) or ([], seconds until one may be ready; None = nothing
        waits). ``drain``: cut without waiting, nothing more will join (the instance stops)."""
        if not self._waiting:
            return [], None
        oldest = self._waiting[0]
        group = [w for w in self._waiting if w.signature == oldest.signature]
        available = sum(w.rows for w in group)
        policy = self.policy
        now = self.clock()
        waited_s = now - oldest.arrived_s
        delay_s = policy.max_queue_delay_us / 1e6
        preferred_hit = any(
            p <= available and self._fits_exactly(group, p) for p in policy.preferred_batch_sizes
        )
        ready = (
            policy.max_batch_size == 0
            or available >= policy.max_rows
            or preferred_hit
            or waited_s >= delay_s
            or (idle and policy.dispatch_when_idle)
            or drain
        )
        if not ready:
            # Wake up for the delay's end, or sooner when a waiting request's deadline passes
            # first: its DEADLINE_EXCEEDED is due then, not when the delay ends.
            return [], max(0.0, min(delay_s - waited_s, self._earliest_deadline_s - now))
        batch = self._cut(group)
        if len(batch) == len(self._waiting):
            self._waiting = []
        else:
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
        self._forget(batch)
        return batch, None

    def _cut(self, group: list[Waiting[T]]) -> list[Waiting[T]]:
        limit = self.policy.max_rows
        for p in sorted(self.policy.preferred_batch_sizes, reverse=True):
            if p <= limit and self._fits_exactly(group, p):
                limit = p
                break
        batch: list[Waiting[T]] = []
        rows = 0
        for w in group:
            if batch and rows + w.rows > limit:
                break
            batch.append(w)
            rows += w.rows
            if self.policy.max_batch_size == 0:
                break
        return batch

    @staticmethod
    def _fits_exactly(group: list[Waiting[T]], size: int) -> bool:
        """True when a prefix of ``group`` (in arrival order) holds exactly ``size`` rows."""
        rows = 0
        for w in group:
            rows += w.rows
            if rows == size:
                return True
            if rows > size:
                return False
        return False
