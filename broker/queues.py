"""Bounded per-model-version queues of requests waiting for worker credit, and leases in flight."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from fabric.protocol import Frame, PeerId, RequestId

RequestKey = tuple[PeerId, RequestId]  # (frontend identity, request id)
ModelKey = tuple[str, str]


@dataclass(slots=True)
class Pending:
    """One request as the broker holds it: routing facts plus the untouched frames."""

    frontend: PeerId
    request_id: RequestId
    key: ModelKey
    deadline_ns: int
    flags: int
    header: Frame  # the encoded RequestHeader, forwarded as is
    payload: Frame  # serialized ModelInferRequest, never decoded here
    attempts: int = 0  # times sent to a worker
    acked: bool = False  # a worker said it started (put it in a batch)
    worker: PeerId | None = None
    avoid: PeerId | None = None  # a hedge never goes to its first copy's worker
    sequence: bool = False  # pinned to its worker (broker.sequences): never requeued elsewhere
    streamed: bool = False  # a decoupled request some of whose responses went out: nor this
    queued_at: float = 0.0  # monotonic time it was first queued; 0.0 = sent on arrival


class ModelQueues:
    """FIFO per (model, version), bounded in total; lookups by request key for cancellation."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self._queues: dict[ModelKey, OrderedDict[RequestKey, Pending]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, key: ModelKey) -> int:
        q = self._queues.get(key)
        return len(q) if q else 0

    def depths(self) -> dict[ModelKey, int]:
        return {k: len(q) for k, q in self._queues.items()}

    def push(self, item: Pending, front: bool = False) -> bool:
        """Queue ``item``; False when the broker is full (the caller answers RESOURCE_EXHAUSTED)."""
        if self._size >= self.max_queued and not front:
            return False
        q = self._queues.setdefault(item.key, OrderedDict())
        q[(item.frontend, item.request_id)] = item
        if front:
            q.move_to_end((item.frontend, item.request_id), last=False)
        self._size += 1
        return True

    def pop(self, key: ModelKey) -> Pending | None:
        q = self._queues.get(key)
        if not q:
            return None
        _, item = q.popitem(last=False)
        self._size -= 1
        return item

    def remove(self, key: ModelKey, rkey: RequestKey) -> Pending | None:
        q = self._queues.get(key)
        item = q.pop(rkey, None) if q else None
        if item is not None:
            self._size -= 1
        return item

    def waiting_keys(self) -> list[ModelKey]:
        return [k for k, q in self._queues.items() if q]

    def drain(self, key: ModelKey) -> Iterator[Pending]:
        """Remove and yield everything queued for ``key``."""
        q = self._queues.pop(key, None)
        if q:
            self._size -= len(q)
            yield from q.values()

    def expired(self, now_ns: int) -> list[Pending]:
        """Remove and return every queued request whose deadline has passed."""
        out: list[Pending] = []
        for q in self._queues.values():
            dead = [rk for rk, p in q.items() if p.deadline_ns and p.deadline_ns <= now_ns]
            for rk in dead:
                out.append(q.pop(rk))
        self._size -= len(out)
        return out
