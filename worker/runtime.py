"""One compute loop per model instance: take requests, batch them, run the model, reply.

The I/O thread puts ``Inbound`` items (or cancellations) on the instance's queue; the loop
decodes and validates each request, lets the ``Batcher`` decide what runs together, runs the
batch under ``torch.inference_mode()`` on the instance's device, splits the outputs by each
request's rows and hands one reply per request to ``send_reply``. A request's error stays with
that request; the loop goes on.

A CPU instance whose batches are short runs *inline* instead: the worker's I/O thread calls
``pump()`` between reads of its sockets, so a request costs no hand-off to a compute thread
and back (two wake-ups and a GIL exchange, which cost more than a small model's compute). A
batch ten times over ``inline_max_s``, or three in a row over it, move the instance to its own
thread for good, so a slow model never holds up heartbeats or other models' requests for long.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fabric import errors
from fabric.deadlines import to_monotonic
from fabric.errors import RequestError
from fabric.protocol import FLAG_NON_IDEMPOTENT, PeerId, RequestHeader

from .batcher import Batcher, BatchPolicy, Waiting
from .codec import DecodedRequest, batch_signature, decode_request, encode_response
from .loaders import LoadedModel
from .padding import pad_and_concat, pad_value, padded_signature, padding_enabled, trim
from .stats import ModelStats

logger = logging.getLogger(__name__)

# (frontend identity, request id, status, message, ModelInferResponse bytes or None)
SendReply = Callable[[PeerId, int, str, str, bytes | None], None]
# (frontend identity, request id): the request joined a batch that is about to run
SendAck = Callable[[PeerId, int], None]


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


_STOP = object()
INLINE_FAR_OVER = 10
"""An inline batch taking this many times the inline limit moves the instance to a thread."""
INLINE_SLOW_STREAK = 3
"""So do this many batches in a row over the limit (in wall and CPU time)."""
CANCEL_MEMORY_MAX = 65_536
CANCEL_MEMORY_S = 120.0
"""How long a cancellation is remembered for a request this worker has not seen (yet)."""


class CancelBoard:
    """Requests cancelled before they ran, shared by a model version's instances.

    The I/O thread adds keys; an instance takes a key when it meets the request (arriving or
    about to join a batch). Keys of requests that finished before their cancel arrived are
    forgotten after ``CANCEL_MEMORY_S`` (oldest first, amortised O(1)), and the board never
    holds more than ``CANCEL_MEMORY_MAX`` keys. Dict operations are atomic under the GIL.
    """

    def __init__(self) -> None:
        self._keys: OrderedDict[tuple[PeerId, int], float] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[PeerId, int]) -> None:
        now = time.monotonic()
        self._keys[key] = now
        self._keys.move_to_end(key)
        keys = self._keys
        while keys:
            oldest_key = next(iter(keys))
            if now - keys[oldest_key] <= CANCEL_MEMORY_S and len(keys) <= CANCEL_MEMORY_MAX:
                break
            keys.pop(oldest_key, None)

    def take(self, key: tuple[PeerId, int]) -> bool:
        return self._keys.pop(key, None) is not None


def _no_flush() -> None:
    """Replies are sent as they are made when the owner does not buffer them."""


class ModelInstance:
    """A compute thread owning one copy of a model (and its device stream, on CUDA)."""

    def __init__(
        self,
        model: LoadedModel,
        index: int,
        send_reply: SendReply,
        stats: ModelStats,
        queue_in: queue.SimpleQueue[object],
        send_ack: SendAck | None = None,
        flush: Callable[[], None] | None = None,
        cancelled: CancelBoard | None = None,
    ) -> None:
        spec = model.spec
        db = spec.dynamic_batching
        self.model = model
        self.name = f"model-{spec.name}-v{model.version}-{index}"
        self.inbox = queue_in
        self._send_reply = send_reply
        self._send_ack = send_ack
        self._flush = flush or _no_flush
        self.cancelled = cancelled if cancelled is not None else CancelBoard()
        self._stats = stats
        self.batcher: Batcher[Ready] = Batcher(
            BatchPolicy(
                # Without dynamic_batching each request runs alone, as in Triton.
                max_batch_size=spec.max_batch_size if db is not None else 0,
                max_queue_delay_us=db.max_queue_delay_microseconds if db else 0,
                preferred_batch_sizes=db.preferred_batch_size if db else (),
            ),
            time.monotonic,
        )
        self._max_rows = self.batcher.policy.max_rows
        self._pad = padding_enabled(spec)
        self._pad_value = pad_value(spec) if self._pad else 0.0
        self._stopping = False
        self.shares_inbox = False  # set by the owner when other instances read the same inbox
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        # Inline mode (see the module docstring): pumped by the owner's I/O thread until a
        # batch takes longer than ``inline_max_s``; 0 = always a thread of its own.
        self.inline_max_s = 0.0
        self.inline = False
        self._inline_done = threading.Event()  # inline: stopped and nothing left to run
        self._slow_streak = 0  # inline: batches in a row over the limit
        self._pump_thread: int | None = None
        self._pump_lock = threading.Lock()

    def start(self, inline_max_s: float = 0.0) -> None:
        """Start computing: on a thread of its own, or inline when ``inline_max_s`` > 0."""
        self.inline_max_s = inline_max_s
        self.inline = inline_max_s > 0
        if not self.inline:
            self._thread.start()

    def stop(self) -> None:
        self.inbox.put(_STOP)

    orphaned = False  # set by the owner that gave up waiting for it to finish

    @property
    def finished(self) -> bool:
        """Stopped and done: nothing held will be run or answered any more by it."""
        if self.inline:
            return self._inline_done.is_set()
        return self._thread.ident is not None and not self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if not self.inline:
            if self._thread.is_alive():
                self._thread.join(timeout_s)
            return
        give_up = time.monotonic() + timeout_s
        while not self._inline_done.is_set() and self.inline:
            if time.monotonic() >= give_up:
                return
            if self._pump_thread in (None, threading.get_ident()):
                # Stopped by the pumping thread itself, or never pumped (the worker stops
                # before its loop ran): finish the work here.
                if self.pump() is None:
                    self._inline_done.wait(0.01)  # nothing to run yet: do not spin
            else:
                self._inline_done.wait(0.01)
        if not self.inline:  # moved to its thread meanwhile
            self.join(max(0.0, give_up - time.monotonic()))

    # ---- loop -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._step():
            pass

    def _step(self) -> bool:
        """One turn of the compute loop; True when the instance is to stop. An unexpected
        error fails the batch at hand, never the thread (and with it every later request)."""
        batch: list[Waiting[Ready]] = []
        try:
            return self._turn(batch)
        except Exception as exc:
            self._loop_error(exc, batch)
            return False

    def _loop_error(self, exc: Exception, batch: list[Waiting[Ready]]) -> None:
        logger.exception("%s: compute loop error", self.name)
        for w in batch:
            self._fail(w.item.inbound, errors.INTERNAL, f"worker error: {exc}")
        self._flush()

    def pump(self) -> float | None:
        """Inline mode, on the owner's I/O thread: run at most one ready batch, never block.
        Returns seconds until this instance wants to be pumped again (0 = at once), or None
        when it holds nothing."""
        with self._pump_lock:  # only ever contended when a joiner pumps (see ``join``)
            if not self.inline:  # moved to its thread while this caller waited for the lock
                return None
            return self._pump()

    def _pump(self) -> float | None:
        self._pump_thread = threading.get_ident()
        current: list[Waiting[Ready]] = []
        wait_s: float | None = None
        try:
            batch, wait_s = self._next()
            if batch:
                current[:] = batch
                started, cpu_started = time.monotonic(), time.thread_time()
                self._execute(batch)
                took = time.monotonic() - started
                current.clear()
                self._flush()
                wait_s = 0.0
                self._judge_inline(took, time.thread_time() - cpu_started)
            elif self._stopping and not self.batcher.rows:
                self._inline_done.set()
        except Exception as exc:
            self._loop_error(exc, current)
            wait_s = 0.0
        return wait_s

    def _judge_inline(self, took_s: float, cpu_s: float) -> None:
        """Leave inline mode after a batch far over the limit, or after INLINE_SLOW_STREAK
        batches in a row over it in CPU time as well: a lone slow batch on a busy (or
        virtualised) machine may only have waited for the CPU."""
        limit = self.inline_max_s
        if took_s > INLINE_FAR_OVER * limit:
            self._leave_inline(took_s)
        elif took_s > limit and cpu_s > limit / 2:
            self._slow_streak += 1
            if self._slow_streak >= INLINE_SLOW_STREAK:
                self._leave_inline(took_s)
        else:
            self._slow_streak = 0

    def _leave_inline(self, took_s: float) -> None:
        logger.info(
            "%s: a batch took %.1f ms (inline limit %.1f ms); computing on its own thread now",
            self.name,
            took_s * 1e3,
            self.inline_max_s * 1e3,
        )
        # Thread first, then the flag: a joiner that sees ``inline`` False joins a live thread.
        # The pumping thread touches the instance no more once this pump returns.
        self._thread.start()
        self.inline = False

    def _next(self) -> tuple[list[Waiting[Ready]], float | None]:
        """Take what waits, answer what expired or was cancelled; the batch to run now (may
        be empty) and seconds until the batcher wants to look again."""
        while True:
            # Expired requests leave first, so the top-up can refill the room they held.
            for w in self.batcher.expire():
                self._expired(w.item.inbound)
            self._top_up()
            cut, wait_s = self.batcher.next_batch(idle=True)
            batch = self._drop_cancelled(cut)
            self._flush()  # replies to requests refused while accepting
            if batch or not cut:
                return batch, wait_s
            # Every request of the batch was cancelled: what else waits may run now.

    def _turn(self, current: list[Waiting[Ready]]) -> bool:
        while True:
            batch, wait_s = self._next()
            if batch:
                current[:] = batch
                self._execute(batch)
                current.clear()
                self._flush()
                continue
            if self._stopping:
                return True
            try:
                item = self.inbox.get(timeout=wait_s) if wait_s is not None else self.inbox.get()
            except queue.Empty:
                continue
            self._take(item)

    def _top_up(self) -> None:
        """Take waiting requests until a full batch is here, or work for a second batch;
        leave the rest to the other instances of the model, which share the inbox."""
        while (
            not self._stopping
            and self.batcher.rows < self._max_rows
            and not (self.shares_inbox and self.batcher.mixed)
        ):
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._take(item)

    def _take(self, item: object) -> None:
        if item is _STOP:
            self._stopping = True  # one stop per instance on a shared inbox: take only ours
            return
        try:
            self._accept(item)
        except Exception as exc:  # a bug here must still answer the request, never lose it
            logger.exception("%s: error accepting a request", self.name)
            if isinstance(item, Inbound):
                self._fail(item, errors.INTERNAL, f"cannot accept the request: {exc}")

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

    def _cancelled(self, inbound: Inbound) -> None:
        self._stats.record_cancelled()
        logger.debug(
            "%s: request %d cancelled before its batch", self.name, inbound.header.request_id
        )
        self._fail(inbound, errors.CANCELLED, "cancelled before its batch started")

    def _accept(self, item: object) -> None:
        if isinstance(item, Cancel):
            key = (item.frontend, item.request_id)
            self.cancelled.add(key)
            dropped = self.batcher.cancel(key)
            if dropped is not None and self.cancelled.take(key):
                self._cancelled(dropped.item.inbound)
            return
        assert isinstance(item, Inbound)
        if self.cancelled and self.cancelled.take((item.frontend, item.header.request_id)):
            self._cancelled(item)
            return
        deadline_s = to_monotonic(item.header.deadline_ns)
        if deadline_s is not None and deadline_s <= time.monotonic():
            self._expired(item)
            return
        try:
            request = decode_request(item.payload, self.model.spec)
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

    def _execute(self, batch: list[Waiting[Ready]]) -> None:
        start = time.monotonic()
        if self._send_ack is not None:
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
            infer_start = time.monotonic()
            outputs = self.model.execute(inputs)
            infer_end = time.monotonic()
            per_request = self._split(requests, outputs, rows)
            if padded is not None:
                per_request = [
                    trim(outs, r, spec, padded)
                    for outs, r in zip(per_request, requests, strict=True)
                ]
        except Exception as exc:  # a model bug fails this batch; the loop goes on
            if isinstance(exc, RequestError):
                code, message = exc.code, exc.message
            else:
                logger.exception("%s: batch of %d failed", self.name, len(batch))
                code, message = errors.INTERNAL, f"model '{spec.name}' failed: {exc}"
            now = time.monotonic()
            for w in batch:
                self._fail(w.item.inbound, code, message)
            self._stats.record_failure(len(batch), sum(now - w.arrived_s for w in batch))
            return
        for w, outs in zip(batch, per_request, strict=True):
            ready = w.item
            try:
                body = encode_response(ready.request, spec.name, self.model.version, outs)
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
        end = time.monotonic()
        self._stats.record_batch(
            len(batch),
            rows,
            queue_s=sum(start - w.arrived_s for w in batch),
            input_s=infer_start - start,
            infer_s=infer_end - infer_start,
            output_s=end - infer_end,
            request_s=sum(end - w.arrived_s for w in batch),
        )

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

    def _fail(self, inbound: Inbound, code: str, message: str) -> None:
        self._send_reply(inbound.frontend, inbound.header.request_id, code, message, None)

    def _expired(self, inbound: Inbound) -> None:
        self._stats.record_expired()
        self._fail(inbound, errors.DEADLINE_EXCEEDED, "deadline passed before the batch started")
