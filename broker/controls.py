"""Repository and statistics operations fanned out by the broker to every live worker, each
answered to its frontend once all of them replied or the control timeout passed. No I/O:
frames go to the dispatcher's outboxes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fabric import errors, messages
from fabric.protocol import (
    CONTROL_OPS,
    ControlHeader,
    ControlReplyHeader,
    Frame,
    PeerId,
    encode_header,
)

from .queues import RequestKey
from .registry import Registry

Outbox = list[tuple[PeerId, list[Frame]]]


@dataclass
class PendingControl:
    """A control operation fanned out to workers, answered once all of them replied."""

    waiting: set[PeerId]
    expires_s: float
    bodies: list[bytes] = field(default_factory=list)
    status: str = errors.OK
    messages: list[str] = field(default_factory=list)


class ControlFanout:
    def __init__(
        self,
        registry: Registry,
        clock: Callable[[], float],
        timeout_s: float,
        to_workers: Outbox,
        to_frontends: Outbox,
    ) -> None:
        self.registry = registry
        self._clock = clock
        self._timeout_s = timeout_s
        self.to_workers = to_workers
        self.to_frontends = to_frontends
        self.pending: dict[RequestKey, PendingControl] = {}

    def start(self, frontend: PeerId, header: ControlHeader) -> None:
        """Fan a repository/statistics operation out to every live worker."""
        rkey = (frontend, header.request_id)
        if header.op not in CONTROL_OPS:
            self._done(
                rkey,
                PendingControl(
                    set(),
                    0.0,
                    status=errors.INVALID_ARGUMENT,
                    messages=[f"unknown operation '{header.op}'"],
                ),
            )
            return
        workers = set(self.registry.workers)
        if header.op == "statistics" and header.model:
            workers = {
                w.identity
                for w in self.registry.workers.values()
                if any(name == header.model for name, _ in w.versions)
            } or workers
        if not workers:
            self._done(
                rkey,
                PendingControl(
                    set(), 0.0, status=errors.UNAVAILABLE, messages=["no worker is connected"]
                ),
            )
            return
        self.pending[rkey] = PendingControl(workers, self._clock() + self._timeout_s)
        frame = encode_header(header)
        for w in workers:
            self.to_workers.append((w, messages.control(frame, frontend)))

    def reply(self, worker: PeerId, header: ControlReplyHeader, frontend: PeerId) -> None:
        rkey = (frontend, header.request_id)
        pending = self.pending.get(rkey)
        if pending is None or worker not in pending.waiting:
            return
        pending.waiting.discard(worker)
        pending.bodies.extend(header.bodies)
        if header.status != errors.OK:
            pending.status = header.status
            pending.messages.append(header.message)
        if not pending.waiting:
            del self.pending[rkey]
            self._done(rkey, pending)

    def _done(self, rkey: RequestKey, pending: PendingControl) -> None:
        reply = ControlReplyHeader(
            rkey[1], pending.status, "; ".join(dict.fromkeys(pending.messages)), pending.bodies
        )
        self.to_frontends.append((rkey[0], messages.control_reply(reply)))

    def expire(self) -> None:
        now = self._clock()
        for rkey, pending in list(self.pending.items()):
            gone = {w for w in pending.waiting if w not in self.registry.workers}
            pending.waiting -= gone
            if now >= pending.expires_s and pending.waiting:
                pending.status = errors.DEADLINE_EXCEEDED
                pending.messages.append(f"{len(pending.waiting)} worker(s) did not answer in time")
                pending.waiting.clear()
            if not pending.waiting:
                del self.pending[rkey]
                self._done(rkey, pending)
