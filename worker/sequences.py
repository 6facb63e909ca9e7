"""Sequence batching on the worker: the ``sequence_batching`` config, which instance holds each
live sequence, and the control tensors a sequence model is given.

Triton's contract, as far as it applies here:
- ``control_input`` names tensors the worker adds to every request of a sequence model:
  START (1 on the first request), END (1 on the last), READY (1: this slot holds a request),
  CORRID (the correlation id: UINT64, or BYTES for string ids). The model reads them like
  any input (``model.py`` gets them in its inputs dict, shape ``[rows, 1]`` when it batches).
- Every request of a sequence runs on the instance its START went to (``SequenceTable``),
  in arrival order: each instance of a sequence model reads an inbox of its own.
- A sequence idle for ``max_sequence_idle_microseconds`` (default 1 s) is released; its next
  request without START fails with Triton's text. So does any request of no live sequence.
- ``direct`` and ``oldest`` both batch requests of different sequences together, at most
  ``max_batch_size`` rows, waiting up to their ``max_queue_delay_microseconds``.

``SequenceTable`` is used by the worker's I/O thread only; it has no lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from fabric import errors
from fabric.errors import RequestError
from fabric.protocol import SEQUENCE_END, SEQUENCE_START, SEQUENCE_STRING_ID, RequestHeader
from protos import model_config_pb2 as mc

DEFAULT_IDLE_US = 1_000_000
"""Triton's default ``max_sequence_idle_microseconds``."""
MAX_SEQUENCES_PER_INSTANCE = 10_000
"""Live sequences one instance holds at most; a START beyond fails RESOURCE_EXHAUSTED."""

_KINDS = {
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START: "START",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END: "END",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY: "READY",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID: "CORRID",
}
_CORRID_TYPES: dict[int, np.dtype] = {
    mc.TYPE_UINT64: np.dtype("<u8"),
    mc.TYPE_INT64: np.dtype("<i8"),
    mc.TYPE_UINT32: np.dtype("<u4"),
    mc.TYPE_INT32: np.dtype("<i4"),
    mc.TYPE_STRING: np.dtype(object),
}

SequenceKey: TypeAlias = tuple[str, bool]  # (correlation id, the id was a string)
Fail = Callable[[str], Exception]


@dataclass(frozen=True)
class Control:
    """One control tensor: its name, kind and the (false, true) values, or a CORRID type."""

    name: str
    kind: str  # "START" | "END" | "READY" | "CORRID"
    dtype: np.dtype
    false_true: tuple[float | int | bool, float | int | bool] = (0, 1)


@dataclass(frozen=True)
class SequenceBatching:
    """Triton's ``sequence_batching`` block, as far as this server applies it."""

    controls: tuple[Control, ...]
    max_sequence_idle_us: int = DEFAULT_IDLE_US
    strategy: str = "direct"  # "direct" | "oldest"
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def corrid(self) -> Control | None:
        return next((c for c in self.controls if c.kind == "CORRID"), None)


def parse_sequence_batching(config: mc.ModelConfig, fail: Fail) -> SequenceBatching | None:
    """The config's ``sequence_batching``, validated; None when it has none."""
    if not config.HasField("sequence_batching"):
        return None
    sb = config.sequence_batching
    if sb.state:
        raise fail("sequence_batching: implicit state is not supported")
    controls: list[Control] = []
    inputs = {t.name for t in config.input}
    for block in sb.control_input:
        if len(block.control) != 1:
            raise fail(f"control_input '{block.name}' must have exactly one control")
        if block.name in inputs or block.name in {c.name for c in controls}:
            raise fail(f"control_input '{block.name}' is also an input or another control")
        controls.append(_control(block.name, block.control[0], fail))
    strategy = sb.WhichOneof("strategy_choice") or "direct"
    if strategy == "oldest":
        delay = sb.oldest.max_queue_delay_microseconds
        preferred = tuple(sorted(set(sb.oldest.preferred_batch_size)))
    else:
        delay = sb.direct.max_queue_delay_microseconds
        preferred = ()
    for size in preferred:
        if not 1 <= size <= max(1, config.max_batch_size):
            raise fail(f"sequence_batching preferred_batch_size {size} is out of range")
    return SequenceBatching(
        controls=tuple(controls),
        max_sequence_idle_us=sb.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
        strategy=strategy,
        max_queue_delay_us=delay,
        preferred_batch_sizes=preferred,
    )


def _control(name: str, control: mc.ModelSequenceBatching.Control, fail: Fail) -> Control:
    kind = _KINDS.get(control.kind)
    if kind is None:
        raise fail(f"control_input '{name}': control kind {control.kind} is not supported")
    if kind == "CORRID":
        dtype = _CORRID_TYPES.get(control.data_type)
        if dtype is None:
            raise fail(f"control_input '{name}': CORRID data_type must be an integer or STRING")
        return Control(name, kind, dtype)
    values: tuple[float | int | bool, ...]
    if control.int32_false_true:
        dtype, values = np.dtype("<i4"), tuple(control.int32_false_true)
    elif control.fp32_false_true:
        dtype, values = np.dtype("<f4"), tuple(control.fp32_false_true)
    elif control.bool_false_true:
        dtype, values = np.dtype(bool), tuple(control.bool_false_true)
    else:
        raise fail(f"control_input '{name}': give int32_, fp32_ or bool_false_true")
    if len(values) != 2:
        raise fail(f"control_input '{name}': the false/true values must be two")
    return Control(name, kind, dtype, (values[0], values[1]))


def sequence_of(header: RequestHeader) -> SequenceKey:
    return header.sequence, bool(header.sequence_flags & SEQUENCE_STRING_ID)


@dataclass(slots=True)
class Slot:
    instance: int
    last_s: float


class SequenceTable:
    """Which instance holds each live sequence of one model version (the I/O thread's)."""

    def __init__(
        self,
        model: str,
        instances: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_per_instance: int = MAX_SEQUENCES_PER_INSTANCE,
    ) -> None:
        self.model = model
        self.idle_s = idle_s
        self._clock = clock
        self._max = max_per_instance * instances
        self._slots: OrderedDict[SequenceKey, Slot] = OrderedDict()  # least recently used first
        self._load = [0] * instances  # live sequences per instance

    def __len__(self) -> int:
        return len(self._slots)

    def route(self, header: RequestHeader) -> int:
        """The instance for a sequence request; raises ``RequestError`` when it must fail."""
        if not header.sequence:
            raise RequestError(
                errors.INVALID_ARGUMENT,
                f"inference request to model '{self.model}' must specify a non-zero or "
                "non-empty correlation ID",
            )
        now = self._clock()
        self._expire(now)
        key = sequence_of(header)
        slot = self._slots.get(key)
        flags = header.sequence_flags
        if slot is None:
            if not flags & SEQUENCE_START:
                raise RequestError(
                    errors.INVALID_ARGUMENT,
                    f"inference request for sequence {key[0]} to model '{self.model}' must "
                    "specify the START flag on the first request of the sequence",
                )
            if len(self._slots) >= self._max:
                raise RequestError(
                    errors.RESOURCE_EXHAUSTED,
                    f"model '{self.model}' holds {self._max} live sequences; end some first",
                )
            instance = min(range(len(self._load)), key=self._load.__getitem__)
            slot = Slot(instance, now)
            self._load[instance] += 1
        if flags & SEQUENCE_END:
            if self._slots.pop(key, None) is not None or flags & SEQUENCE_START:
                self._load[slot.instance] -= 1
            return slot.instance
        slot.last_s = now
        self._slots[key] = slot
        self._slots.move_to_end(key)
        return slot.instance

    def _expire(self, now: float) -> None:
        limit = now - self.idle_s
        slots = self._slots
        while slots:
            key, slot = next(iter(slots.items()))
            if slot.last_s > limit:
                return
            del slots[key]
            self._load[slot.instance] -= 1


def check_request(model: str, batch_size: int) -> None:
    """Triton's sequence batcher takes one row per request."""
    if batch_size > 1:
        raise RequestError(
            errors.INVALID_ARGUMENT,
            f"inference request to model '{model}' must specify batch-size 1 due to "
            "requirements of sequence batcher",
        )


def control_tensors(
    sb: SequenceBatching, headers: Sequence[RequestHeader], batched: bool
) -> dict[str, np.ndarray]:
    """The control tensors for a batch of sequence requests (one row each, in batch order).
    Raises ``RequestError`` for a string id given to an integer CORRID."""
    out: dict[str, np.ndarray] = {}
    for control in sb.controls:
        if control.kind == "CORRID":
            values = np.array([_corrid(control, h) for h in headers], dtype=control.dtype)
        else:
            false, true = control.false_true
            flag = {"START": SEQUENCE_START, "END": SEQUENCE_END}.get(control.kind, 0)
            values = np.array(
                [true if not flag or h.sequence_flags & flag else false for h in headers],
                dtype=control.dtype,
            )
        out[control.name] = values.reshape(-1, 1) if batched else values.reshape(1)
    return out


def _corrid(control: Control, header: RequestHeader) -> int | bytes:
    if control.dtype == np.dtype(object):
        return header.sequence.encode()
    if header.sequence_flags & SEQUENCE_STRING_ID or not header.sequence.isdigit():
        raise RequestError(
            errors.INVALID_ARGUMENT,
            f"sequence id '{header.sequence}' must be an integer: control '{control.name}' "
            f"of model '{header.model}' is {control.dtype.name}",
        )
    value = int(header.sequence)
    info = np.iinfo(control.dtype)
    if not info.min <= value <= info.max:
        raise RequestError(
            errors.INVALID_ARGUMENT,
            f"sequence id {value} does not fit control '{control.name}' ({control.dtype.name})",
        )
    return value
