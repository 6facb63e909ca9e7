"""Sequence pins: the one worker each live sequence (Triton's correlation id) is bound to.

A stateful model keeps a sequence's state on one worker instance, so every request of the
sequence must reach the worker its START went to. ``SequencePins`` decides, without I/O and
with an injected clock:

- a START picks the worker holding the fewest live sequences (of those with credit, if any;
  then the least loaded) and pins the sequence to it: sequences hold state, so they are
  spread by count, not by the momentary load. A START for a sequence already pinned
  restarts it on the same worker (as in Triton: the earlier sequence simply ends early);
- any other request goes to the pinned worker at once, whatever its credit: it cannot go
  elsewhere, and waiting in the model queue could let another worker take it (what is in
  flight stays bounded by the frontends' in-flight and per-stream limits);
- the END request is sent and then the pin is released; a pin idle for ``idle_s`` is
  released too (the worker expires the sequence's state by the model's own
  ``max_sequence_idle_microseconds``; the broker's bound only frees memory);
- when the pinned worker is lost, the pin becomes a tombstone: the next request of that
  sequence fails ABORTED with a clear text (never retried, never moved elsewhere), until a
  START begins it again.

A request of no live sequence fails with Triton's text ("... must specify the START flag on
the first request of the sequence"), INVALID_ARGUMENT.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fabric import errors
from fabric.errors import RequestError
from fabric.protocol import SEQUENCE_END, SEQUENCE_START, SEQUENCE_STRING_ID, PeerId, RequestHeader

from .registry import ModelKey, Registry

PIN_IDLE_S = 3600.0
"""A pin nobody used for this long is dropped (its sequence was abandoned)."""
MAX_PINS = 100_000
"""Live sequences a broker pins at most; a START beyond fails RESOURCE_EXHAUSTED."""
LOST_REMEMBERED = 65_536
"""Tombstones of sequences whose worker was lost, remembered (oldest dropped first)."""

# (model, requested version, correlation id, the id was a string)
SequenceKey = tuple[str, str, str, bool]


@dataclass(slots=True)
class Pin:
    worker: PeerId
    version: ModelKey  # the version its START resolved to: the sequence stays on it
    last_s: float


def sequence_key(header: RequestHeader) -> SequenceKey:
    return (
        header.model,
        header.version,
        header.sequence,
        bool(header.sequence_flags & SEQUENCE_STRING_ID),
    )


def start_flag_error(key: SequenceKey) -> RequestError:
    """Triton's answer to a request of a sequence that is not live."""
    return RequestError(
        errors.INVALID_ARGUMENT,
        f"inference request for sequence {key[2]} to model '{key[0]}' must specify the "
        "START flag on the first request of the sequence",
    )


class SequencePins:
    """Which worker holds each live sequence. Pure: driven by calls and an injected clock."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        idle_s: float = PIN_IDLE_S,
        max_pins: int = MAX_PINS,
    ) -> None:
        self._clock = clock
        self.idle_s = idle_s
        self.max_pins = max_pins
        self._pins: OrderedDict[SequenceKey, Pin] = OrderedDict()  # least recently used first
        self._lost: OrderedDict[SequenceKey, None] = OrderedDict()
        self._held: dict[PeerId, int] = {}  # live pins per worker

    def __len__(self) -> int:
        return len(self._pins)

    def worker_of(self, key: SequenceKey) -> PeerId | None:
        pin = self._pins.get(key)
        return pin.worker if pin is not None else None

    def route(self, header: RequestHeader, registry: Registry) -> tuple[PeerId, ModelKey]:
        """The worker and version for a sequence request; raises ``RequestError`` when it
        must fail. The pin is updated as if the request were sent (the caller sends it)."""
        key = sequence_key(header)
        now = self._clock()
        pin = self._pins.get(key)
        flags = header.sequence_flags
        if flags & SEQUENCE_START:
            self._lost.pop(key, None)
            if pin is None or pin.worker not in registry.workers:
                pin = self._new_pin(key, header, registry, now)
        elif pin is None:
            if key in self._lost:
                raise RequestError(
                    errors.ABORTED,
                    f"sequence {key[2]} of model '{key[0]}' was lost with the worker that "
                    "held its state; start it again with the START flag",
                )
            raise start_flag_error(key)
        old = self._pins.pop(key, None)
        if old is not None:
            self._release(old.worker)
        if not flags & SEQUENCE_END:
            pin.last_s = now
            self._pins[key] = pin
            self._held[pin.worker] = self._held.get(pin.worker, 0) + 1
        return pin.worker, pin.version

    def _release(self, worker: PeerId) -> None:
        left = self._held.get(worker, 0) - 1
        if left > 0:
            self._held[worker] = left
        else:
            self._held.pop(worker, None)

    def _new_pin(
        self, key: SequenceKey, header: RequestHeader, registry: Registry, now: float
    ) -> Pin:
        if len(self._pins) >= self.max_pins:
            raise RequestError(
                errors.RESOURCE_EXHAUSTED,
                f"too many live sequences ({self.max_pins}); end some before starting more",
            )
        version = registry.resolve_version(header.model, header.version)
        if version is None or not registry.version_known(header.model, version):
            raise RequestError(errors.NOT_FOUND, f"unknown model '{header.model}'")
        model_key = (header.model, version)
        servers = registry.servers(model_key)
        if not servers:
            raise RequestError(
                errors.UNAVAILABLE,
                f"no live worker serves model '{header.model}' version '{version}'",
            )
        free = [w for w in servers if w.credit(header.model) > 0] or servers
        worker = min(free, key=lambda w: (self._held.get(w.identity, 0), w.load(header.model)))
        return Pin(worker.identity, model_key, now)

    def worker_lost(self, worker: PeerId) -> int:
        """The sequences pinned to ``worker`` are lost: tombstones until restarted. Returns
        how many there were."""
        gone = [k for k, pin in self._pins.items() if pin.worker == worker]
        self._held.pop(worker, None)
        for key in gone:
            del self._pins[key]
            self._lost[key] = None
            self._lost.move_to_end(key)
        while len(self._lost) > LOST_REMEMBERED:
            self._lost.popitem(last=False)
        return len(gone)

    def expire(self) -> int:
        """Drop pins idle for ``idle_s``; returns how many."""
        limit = self._clock() - self.idle_s
        dropped = 0
        while self._pins:
            key, pin = next(iter(self._pins.items()))
            if pin.last_s > limit:
                break
            del self._pins[key]
            self._release(pin.worker)
            dropped += 1
        return dropped
