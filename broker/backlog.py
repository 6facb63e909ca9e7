"""Messages of one peer that wait their turn, so that no peer can make the broker stall the
others: a BATCH may hold 100,000 messages, and handling them in one go would hold every other
peer's traffic for a second. Each peer gets ``budget`` messages handled per wake-up; the rest
wait here, in arrival order, for the next wake-ups (which then poll without waiting).

No I/O: the socket loop (``server.py``) adds, takes and handles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from fabric.protocol import PeerId

PEER_MESSAGES_PER_WAKEUP = 1024
"""Messages of one peer handled per wake-up (about 10 ms of work); far above what a frontend
or worker coalesces into one BATCH in normal running."""

Item = TypeVar("Item")
"""Whatever the socket loop needs to handle one message later."""


class PeerBacklog(Generic[Item]):
    def __init__(self, budget: int = PEER_MESSAGES_PER_WAKEUP) -> None:
        self.budget = budget
        self._waiting: dict[PeerId, deque[Item]] = {}
        self._spent: dict[PeerId, int] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def holds(self, peer: PeerId) -> bool:
        return peer in self._waiting

    def peers(self) -> list[PeerId]:
        return list(self._waiting)

    def new_wakeup(self) -> None:
        self._spent.clear()

    def left(self, peer: PeerId) -> int:
        """Messages ``peer`` may still have handled in this wake-up."""
        return max(0, self.budget - self._spent.get(peer, 0))

    def spend(self, peer: PeerId, n: int) -> None:
        self._spent[peer] = self._spent.get(peer, 0) + n

    def add(self, peer: PeerId, items: Iterable[Item]) -> None:
        """Queue ``items`` behind whatever ``peer`` already has waiting."""
        queue = self._waiting.setdefault(peer, deque())
        queue.extend(items)
        if not queue:
            del self._waiting[peer]

    def take(self, peer: PeerId) -> list[Item]:
        """The items of ``peer`` to handle now, oldest first, within its budget left."""
        queue = self._waiting.get(peer)
        if queue is None:
            return []
        n = min(self.left(peer), len(queue))
        out = [queue.popleft() for _ in range(n)]
        if not queue:
            del self._waiting[peer]
        self.spend(peer, n)
        return out
