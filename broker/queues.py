"""Bounded per-model-version queues of requests waiting for worker credit, and leases in flight.

The queues are bounded twice: in requests (``--max-queued``) and in payload bytes
(``--max-queued-bytes``), since one 16 MiB request weighs as much as thousands of small ones. A
requeue (a lost worker's requests, put back at the front) passes both bounds: it was admitted
once and must not be dropped now.
"""

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


def payload_bytes(item: Pending) -> int:
    """The bytes ``item``'s payload frame holds (a large one is a view of ZeroMQ's buffer)."""
    p = item.payload
    return p.nbytes if isinstance(p, memoryview) else len(p)


class ModelQueues:
    """FIFO per (model, version), bounded in total requests and payload bytes (0 bytes: no
    byte bound); lookups by request key for cancellation."""

    def __init__(self, max_queued: int, max_queued_bytes: int = 0) -> None:
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self._queues: dict[ModelKey, OrderedDict[RequestKey, Pending]] = {}
        self._size = 0
        self.queued_bytes = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, key: ModelKey) -> int:
        q = self._queues.get(key)
        return len(q) if q else 0

    def depths(self) -> dict[ModelKey, int]:
        return {k: len(q) for k, q in self._queues.items()}

    def full(self, size: int) -> str:
        """Why one more request of ``size`` payload bytes does not fit; "" when it does."""
        if self._size >= self.max_queued:
            return f"broker queue full ({self.max_queued} requests waiting)"
        if self.max_queued_bytes and self.queued_bytes + size > self.max_queued_bytes:
            return (
                f"broker queue full: request of {size} bytes with {self.queued_bytes} bytes "
                f"waiting would exceed --max-queued-bytes ({self.max_queued_bytes} bytes)"
            )
        return ""

    def push(self, item: Pending, front: bool = False) -> bool:
        """Queue ``item``; False when the broker is full (the caller answers RESOURCE_EXHAUSTED
        with ``full``'s reason). A requeue at the ``front`` always fits."""
        size = payload_bytes(item)
        if not front and self.full(size):
            return False
        q = self._queues.setdefault(item.key, OrderedDict())
        q[(item.frontend, item.request_id)] = item
        if front:
            q.move_to_end((item.frontend, item.request_id), last=False)
        self._size += 1
        self.queued_bytes += size
        return True

    def pop(self, key: ModelKey) -> Pending | None:
        q = self._queues.get(key)
        if not q:
            return None
        _, item = q.popitem(last=False)
        self._size -= 1
        self.queued_bytes -= payload_bytes(item)
        return item

    def remove(self, key: ModelKey, rkey: RequestKey) -> Pending | None:
        q = self._queues.get(key)
        item = q.pop(rkey, None) if q else None
        if item is not None:
            self._size -= 1
            self.queued_bytes -= payload_bytes(item)
        return item

    def waiting_keys(self) -> list[ModelKey]:
        return [k for k, q in self._queues.items() if q]

    def drain(self, key: ModelKey) -> Iterator[Pending]:
        """Remove and yield everything queued for ``key``."""
        q = self._queues.pop(key, None)
        if q:
            self._size -= len(q)
            self.queued_bytes -= sum(payload_bytes(p) for p in q.values())
            yield from q.values()

    def expired(self, now_ns: int) -> list[Pending]:
        """Remove and return every queued request whose deadline has passed."""
        out: list[Pending] = []
        for q in self._queues.values():
            dead = [rk for rk, p in q.items() if p.deadline_ns and p.deadline_ns <= now_ns]
            for rk in dead:
                out.append(q.pop(rk))
        self._size -= len(out)
        self.queued_bytes -= sum(payload_bytes(p) for p in out)
        return out
