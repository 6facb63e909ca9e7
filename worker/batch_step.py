"""One model instance's batch step, without threads: accept requests, expire and cancel them,
cut batches, run a batch and split its outputs into one reply per request.

The drivers in ``runtime.py`` decide *when* and on *which thread* a step runs; this module
decides *what* happens. It reads no queue itself: a driver hands it items (``take``) and a
``refill`` callback that tops it up from the instance's inbox before each cut. The clock is
injected, so the waiting rules are testable with a fake one. A request's error stays with that
request; an unexpected error fails the batch at hand only (``fail_batch``).

Shared with other threads: the ``CancelBoard`` (the I/O thread adds keys; a lock guards it)
and ``ModelStats`` (its own lock). Everything else belongs to whichever thread the driver lets
run the step, one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fabric import errors, tracing
from fabric.deadlines import to_monotonic
from fabric.errors import RequestError
from fabric.protocol import FLAG_NON_IDEMPOTENT, PeerId, RequestHeader

from .batcher import Batcher, BatchPolicy, Waiting
from .codec import DecodedRequest, batch_signature, decode_request, encode_response_parts
from .decoupled import StreamWindows, run_decoupled
from .gpu_faults import DeviceHealth, judge, release_cached_memory
from .loaders import LoadedModel
from .padding import pad_and_concat, pad_value, padded_signature, padding_enabled, trim
from .raw_wire import RawParts
from .sequences import check_request, control_tensors
from .stats import ModelStats
from .traces import record_batch

logger = logging.getLogger(__name__)


class SendReply(Protocol):
    """(frontend identity, request id, status, message, ModelInferResponse bytes, unjoined
    parts (``raw_wire.RawParts``) or None); ``more``: a decoupled model's response with more
    to follow (``worker.decoupled``)."""

    def __call__(
        self,
        frontend: PeerId,
        request_id: int,
        status: str,
        message: str,
        body: bytes | RawParts | None,
        more: bool = False,
        /,
    ) -> None: ...


# (frontend identity, request id): the request joined a batch that is about to run
SendAck = Callable[[PeerId, int], None]
Clock = Callable[[], float]
CancelKey = tuple[PeerId, int]

CANCEL_MEMORY_MAX = 65_536
"""The most cancellation keys a board holds."""
CANCEL_MEMORY_S = 120.0
"""How long a cancellation is remembered for a request this worker has not seen (yet)."""


@dataclass(slots=True)
class Inbound:
    header: RequestHeader
    frontend: PeerId
    payload: bytes | memoryview
    received_s: float


@dataclass(slots=True)
class Cancel:
    frontend: PeerId
    request_id: int


@dataclass(slots=True)
class Ready:
    inbound: Inbound
    request: DecodedRequest


class _Stop:
    """The type of ``STOP``: one per instance on its inbox, after what it is to finish."""

    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()


class CancelBoard:
    """Requests cancelled before they ran, shared by a model version's instances.

    The I/O thread adds keys; an instance takes a key when it meets the request (arriving or
    about to join a batch). Keys of requests that finished before their cancel arrived are
    forgotten after ``CANCEL_MEMORY_S`` (oldest first, amortised O(1)), and the board never
    holds more than ``CANCEL_MEMORY_MAX`` keys. ``_lock`` guards ``_keys``; ``bool(board)`` is
    read without it, as a hint on the hot path: a cancel racing with it is no different from
    one arriving just after the batch started, which the broker handles.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._keys: OrderedDict[CancelKey, float] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock
        self.windows = StreamWindows()  # credit of decoupled requests; a cancel wakes them

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: CancelKey) -> None:
        now = self._clock()
        with self._lock:
            keys = self._keys
            keys[key] = now
            keys.move_to_end(key)
            while keys:
                oldest_key = next(iter(keys))
                if now - keys[oldest_key] <= CANCEL_MEMORY_S and len(keys) <= CANCEL_MEMORY_MAX:
                    break
                del keys[oldest_key]
        if len(self.windows):
            self.windows.wake()

    def take(self, key: CancelKey) -> bool:
        with self._lock:
            return self._keys.pop(key, None) is not None


def _no_flush() -> None:
    """Replies are sent as they are made when the owner does not buffer them."""


def batch_policy(model: LoadedModel) -> BatchPolicy:
    """The batcher's policy for a model, as Triton reads its config."""
    spec = model.spec
    sb = spec.sequence_batching
    if spec.decoupled:  # one request at a time: its generator holds the instance
        return BatchPolicy(max_batch_size=0)
    if sb is not None:
        return BatchPolicy(
            max_batch_size=spec.max_batch_size,
            max_queue_delay_us=sb.max_queue_delay_us,
            preferred_batch_sizes=sb.preferred_batch_sizes,
            dispatch_when_idle=False,
        )
    db = spec.dynamic_batching
    return BatchPolicy(
        # Without dynamic_batching each request runs alone, as in Triton.
        max_batch_size=spec.max_batch_size if db is not None else 0,
        max_queue_delay_us=db.max_queue_delay_microseconds if db else 0,
        preferred_batch_sizes=db.preferred_batch_size if db else (),
        dispatch_when_idle=spec.dispatch_when_idle,
    )


class BatchStep:
    """What one instance holds and does; driven by exactly one thread at a time."""

    def __init__(
        self,
        model: LoadedModel,
        name: str,
        send_reply: SendReply,
        stats: ModelStats,
        cancelled: CancelBoard,
        send_ack: SendAck | None = None,
        flush: Callable[[], None] | None = None,
        clock: Clock = time.monotonic,
        health: DeviceHealth | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self._health = health  # shared by the worker's instances; see gpu_faults
        self.cancelled = cancelled
        self._send_reply = send_reply
        self._send_ack = send_ack
        self._flush = flush or _no_flush
        self._stats = stats
        self._clock = clock
        self.batcher: Batcher[Ready] = Batcher(batch_policy(model), clock)
        self._max_rows = self.batcher.policy.max_rows
        self._pad = padding_enabled(model.spec)
        self._pad_value = pad_value(model.spec) if self._pad else 0.0
        self.shares_inbox = False  # set by the owner when other instances read the same inbox
        self.stopping = False  # took its STOP: takes nothing more, finishes what it holds

    @property
    def wants_more(self) -> bool:
        """Room for more requests: under a full batch and, on a shared inbox, holding work of
        one kind only (a second kind is left to the other instances)."""
        return (
            not self.stopping
            and self.batcher.rows < self._max_rows
            and not (self.shares_inbox and self.batcher.mixed)
        )

    @property
    def done(self) -> bool:
        """Took its STOP and holds nothing more to run."""
        return self.stopping and not self.batcher.rows

    def take(self, item: object) -> None:
        """One inbox item: a request, a cancellation or STOP. Never raises: a request that
        cannot be accepted is answered."""
        if item is STOP:
            self.stopping = True
            return
        try:
            self._accept(item)
        except Exception as exc:  # a bug here must still answer the request, never lose it
            logger.exception("%s: error accepting a request", self.name)
            if isinstance(item, Inbound):
                self._fail(item, errors.INTERNAL, f"cannot accept the request: {exc}")

    def next_batch(self, refill: Callable[[], None]) -> tuple[list[Waiting[Ready]], float | None]:
        """Answer what expired or was cancelled; the batch to run now (may be empty) and the
        seconds until the batcher wants to look again (None: it holds nothing)."""
        batcher = self.batcher
        while True:
            # Expired requests leave first, so that the refill can use the room they held.
            for w in batcher.expire():
                self._expired(w.item.inbound)
            refill()
            # The instance is idle whenever it looks: it runs one batch at a time. A stopping
            # one waits for nobody: no request joins after its STOP.
            cut, wait_s = batcher.next_batch(idle=True, drain=self.stopping)
            batch = self._drop_cancelled(cut)
            self._flush()  # replies to requests refused while accepting
            if batch or not cut:
                return batch, wait_s
            # Every request of the batch was cancelled: what else waits may run now.

    def fail_batch(self, batch: list[Waiting[Ready]], exc: Exception) -> None:
        """An unexpected error fails the batch at hand, never the driver."""
        logger.exception("%s: compute loop error", self.name)
        for w in batch:
            self._fail(w.item.inbound, errors.INTERNAL, f"worker error: {exc}")
        self._flush()

    # ---- accepting ------------------------------------------------------------------------
    def _accept(self, item: object) -> None:
        if isinstance(item, Cancel):
            key = (item.frontend, item.request_id)
            self.cancelled.add(key)
            dropped = self.batcher.cancel(key)
            if dropped is not None and self.cancelled.take(key):
                self._cancelled(dropped.item.inbound)
            return
        if not isinstance(item, Inbound):
            raise TypeError(f"unexpected inbox item {item!r}")
        if self.cancelled and self.cancelled.take((item.frontend, item.header.request_id)):
            self._cancelled(item)
            return
        deadline_s = to_monotonic(item.header.deadline_ns)
        if deadline_s is not None and deadline_s <= self._clock():
            self._expired(item)
            return
        try:
            request = decode_request(item.payload, self.model.spec, item.header.shm)
            if item.header.sequence:
                check_request(self.model.spec.name, request.batch_size)
        except RequestError as exc:
            self._fail(item, exc.code, exc.message)
            return
        self.batcher.add(
            Waiting(
                Ready(item, request),
                (item.frontend, item.header.request_id),
                request.batch_size,
                padded_signature(request, self.model.spec)
                if self._pad
                else batch_signature(request),
                item.received_s,
                deadline_s,
            )
        )

    def _drop_cancelled(self, batch: list[Waiting[Ready]]) -> list[Waiting[Ready]]:
        """Requests cancelled before their batch starts get CANCELLED instead of running."""
        if not batch or not self.cancelled:
            return batch
        kept = []
        for w in batch:
            if self.cancelled.take(w.key):  # type: ignore[arg-type]
                self._cancelled(w.item.inbound)
            else:
                kept.append(w)
        return kept

    # ---- running --------------------------------------------------------------------------
    def run(self, batch: list[Waiting[Ready]], acked: bool = False) -> None:
        """Run one batch and answer each of its requests (sent at the flush that ends it).
        ``acked``: a half of a batch that ran out of device memory, whose acks went out."""
        clock = self._clock
        start = clock()
        if self._health is not None and self._health.poisoned is not None:
            self._fail_all(batch, errors.INTERNAL, self._health.poisoned)
            return
        if self.model.spec.decoupled:
            self._run_decoupled(batch)
            return
        if self._send_ack is not None and not acked:
            # Non-idempotent requests tell the broker they may now have run.
            acked = False
            for w in batch:
                inbound = w.item.inbound
                if inbound.header.flags & FLAG_NON_IDEMPOTENT:
                    self._send_ack(inbound.frontend, inbound.header.request_id)
                    acked = True
            if acked:
                self._flush()  # the broker must know before the model runs
        requests = [w.item.request for w in batch]
        spec = self.model.spec
        rows = sum(r.batch_size for r in requests)
        try:
            padded = None
            if len(requests) == 1:
                inputs = requests[0].inputs
            elif self._pad:
                inputs, padded = pad_and_concat(requests, spec, self._pad_value)
            else:
                inputs = {
                    name: np.concatenate([r.inputs[name] for r in requests], axis=0)
                    for name in requests[0].inputs
                }
            if spec.sequence_batching is not None:
                headers = [w.item.inbound.header for w in batch]
                inputs = {
                    **inputs,
                    **control_tensors(spec.sequence_batching, headers, spec.batched),
                }
            infer_start = clock()
            outputs = self.model.execute(inputs)
            infer_end = clock()
            per_request = self._split(requests, outputs, rows)
            if padded is not None:
                per_request = [
                    trim(outs, r, spec, padded)
                    for outs, r in zip(per_request, requests, strict=True)
                ]
        except Exception as exc:  # a model bug fails this batch; the loop goes on
            verdict = judge(exc, spec.name, len(batch))
            if verdict.split:  # out of device memory: each half may fit
                logger.warning("%s: out of device memory on %d rows; splitting", self.name, rows)
                release_cached_memory()
                half = len(batch) // 2
                self.run(batch[:half], acked=True)
                self.run(batch[half:], acked=True)
                return
            if not isinstance(exc, RequestError):
                logger.exception("%s: batch of %d failed", self.name, len(batch))
            if verdict.poison and self._health is not None:
                self._health.poison(verdict.message)
            self._fail_all(batch, verdict.code, verdict.message)
            if tracing.ENABLED:
                self._trace(batch, rows, start, None, verdict.code)
            return
        for w, outs in zip(batch, per_request, strict=True):
            ready = w.item
            try:
                body = encode_response_parts(ready.request, spec.name, self.model.version, outs)
            except RequestError as exc:
                self._fail(ready.inbound, exc.code, exc.message)
                continue
            except Exception as exc:  # e.g. a response over protobuf's size limit
                logger.exception("%s: cannot encode a response", self.name)
                self._fail(ready.inbound, errors.INTERNAL, f"cannot encode the response: {exc}")
                continue
            self._send_reply(
                ready.inbound.frontend, ready.inbound.header.request_id, errors.OK, "", body
            )
        end = clock()
        self._stats.record_batch(
            len(batch),
            rows,
            queue_s=sum(start - w.arrived_s for w in batch),
            input_s=infer_start - start,
            infer_s=infer_end - infer_start,
            output_s=end - infer_end,
            request_s=sum(end - w.arrived_s for w in batch),
        )
        self._flush()
        if tracing.ENABLED:
            self._trace(batch, rows, start, (infer_start, infer_end), errors.OK)

    def _trace(
        self,
        batch: list[Waiting[Ready]],
        rows: int,
        start: float,
        infer: tuple[float, float] | None,
        status: str,
    ) -> None:
        inbounds = [w.item.inbound for w in batch]
        spec = self.model.spec
        record_batch(
            spec.name, str(self.model.version), inbounds, rows, start, infer, self._clock(), status
        )

    def _run_decoupled(self, batch: list[Waiting[Ready]]) -> None:
        for w in batch:  # one: a decoupled model's policy does not batch
            inbound = w.item.inbound
            started = self._clock()
            run_decoupled(
                self.model,
                w.item.request,
                inbound.frontend,
                inbound.header.request_id,
                inbound.header.deadline_ns,
                self._send_reply,
                self._flush,
                self.cancelled.windows,
                self.cancelled.take,
            )
            end = self._clock()
            self._stats.record_batch(
                1, 1, queue_s=started - w.arrived_s, input_s=0.0, infer_s=end - started,
                output_s=0.0, request_s=end - w.arrived_s,
            )  # fmt: skip

    def _split(
        self, requests: list[DecodedRequest], outputs: dict[str, np.ndarray], rows: int
    ) -> list[dict[str, np.ndarray]]:
        if len(requests) == 1:
            return [outputs]
        for name, value in outputs.items():
            if value.shape[:1] != (rows,):
                raise RequestError(
                    errors.INTERNAL,
                    f"model '{self.model.spec.name}' output '{name}' has batch "
                    f"{value.shape[:1]}, expected {rows} rows",
                )
        out: list[dict[str, np.ndarray]] = []
        offset = 0
        for r in requests:
            out.append({k: v[offset : offset + r.batch_size] for k, v in outputs.items()})
            offset += r.batch_size
        return out

    # ---- answering ------------------------------------------------------------------------
    def _fail_all(self, batch: list[Waiting[Ready]], code: str, message: str) -> None:
        now = self._clock()
        for w in batch:
            self._fail(w.item.inbound, code, message)
        self._stats.record_failure(len(batch), sum(now - w.arrived_s for w in batch))
        self._flush()

    def _fail(self, inbound: Inbound, code: str, message: str) -> None:
        self._send_reply(inbound.frontend, inbound.header.request_id, code, message, None)

    def _expired(self, inbound: Inbound) -> None:
        self._stats.record_expired()
        self._fail(inbound, errors.DEADLINE_EXCEEDED, "deadline passed before the batch started")

    def _cancelled(self, inbound: Inbound) -> None:
        self._stats.record_cancelled()
        logger.debug(
            "%s: request %d cancelled before its batch", self.name, inbound.header.request_id
        )
        self._fail(inbound, errors.CANCELLED, "cancelled before its batch started")
