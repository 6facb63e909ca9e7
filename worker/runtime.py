"""The drivers of a model instance's batch step: on a thread of its own, or inline on the
worker's I/O thread. What a step does (accept, expire, cancel, cut, run, reply) is
``batch_step.BatchStep``; this module decides which thread runs it, and when.

- Threaded: the instance's thread takes items from its inbox (blocking until the batcher's
  next deadline), and runs batches. GPU instances, several instances, slow and Python models.
- Inline: a CPU instance whose batches are short is run by the worker's I/O thread, which calls
  ``pump()`` between reads of its sockets: a request costs no hand-off to a compute thread and
  back (two wake-ups and a GIL exchange, which cost more than a small model's compute). A batch
  ``INLINE_FAR_OVER`` times over ``inline_max_s``, or ``INLINE_SLOW_STREAK`` in a row over it,
  move the instance to its own thread for good (``InlineJudge``), so that a slow model never
  holds up heartbeats or other models' requests for long. ``stop()`` hands what an inline
  instance still holds to its thread too, so ``join()`` only ever waits.

Who runs the step is the instance's ``State``, changed only under ``_lock``: in ``INLINE``
the thread holding ``_lock`` (``pump`` takes it for each turn, ``stop`` takes it to hand over);
from ``THREADED`` or ``DRAINING`` on, the instance's thread alone (it is started under
``_lock``, after the state changed, so no pump runs the step again). ``_stopped`` is set by
whoever saw the step finish; ``join`` waits on it.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable

from .batch_step import (
    STOP,
    BatchStep,
    Cancel,
    CancelBoard,
    Inbound,
    Ready,
    SendAck,
    SendReply,
)
from .batcher import Waiting
from .gpu_faults import DeviceHealth
from .loaders import LoadedModel
from .stats import ModelStats

__all__ = [
    "Cancel",
    "CancelBoard",
    "Inbound",
    "InlineJudge",
    "ModelInstance",
    "SendAck",
    "SendReply",
    "State",
]

logger = logging.getLogger(__name__)

INLINE_FAR_OVER = 10
"""An inline batch taking this many times the inline limit moves the instance to a thread."""
INLINE_SLOW_STREAK = 3
"""So do this many batches in a row over the limit (in wall and CPU time)."""
INLINE_CPU_SHARE = 0.5
"""A batch over the limit counts towards the streak only with this share of it in CPU time:
less means it mostly waited for a busy (or virtualised) CPU, which is no fault of the model."""


class State(enum.Enum):
    NEW = "new"  # constructed; items may queue
    INLINE = "inline"  # the owner's I/O thread runs the step through ``pump``
    THREADED = "threaded"  # the instance's thread runs the step
    DRAINING = "draining"  # stopped: its thread finishes what was queued before the stop
    STOPPED = "stopped"  # the step took its STOP and ran what it held


class InlineJudge:
    """Decides when an inline instance is too slow for the I/O thread. Pure: fed the wall and
    CPU seconds of each batch."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._streak = 0  # batches in a row over the limit

    def too_slow(self, took_s: float, cpu_s: float) -> bool:
        """True after a batch far over the limit, or after ``INLINE_SLOW_STREAK`` in a row over
        it in CPU time as well: a lone slow batch on a busy machine may only have waited."""
        limit = self.limit_s
        if took_s > INLINE_FAR_OVER * limit:
            return True
        if took_s > limit and cpu_s > INLINE_CPU_SHARE * limit:
            self._streak += 1
            return self._streak >= INLINE_SLOW_STREAK
        self._streak = 0
        return False


class ModelInstance:
    """One copy of a model (and its device stream, on CUDA) and the driver of its step."""

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
        clock: Callable[[], float] = time.monotonic,
        health: DeviceHealth | None = None,
    ) -> None:
        self.model = model
        self.name = f"model-{model.spec.name}-v{model.version}-{index}"
        self.inbox = queue_in
        self.cancelled = cancelled if cancelled is not None else CancelBoard()
        self.step = BatchStep(
            model, self.name, send_reply, stats, self.cancelled, send_ack, flush, clock, health
        )
        # Run first on the instance's own thread (bind its GPU, warm up), then ``_prepared``.
        self._prepare: Callable[[], None] | None = None
        self._prepared = threading.Event()
        self._prepare_error: BaseException | None = None
        self._lock = threading.Lock()
        self._state = State.NEW
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._judge = InlineJudge(0.0)
        # Owner-facing: the owner's I/O loop looks after this instance (pumps it while it runs
        # inline, reaps it if orphaned). False from the start for a threaded instance, and
        # once an inline one moved to its thread for being slow; written under ``_lock``.
        self.inline = False
        self.orphaned = False  # set by the owner that gave up waiting for it to finish

    @property
    def state(self) -> State:
        return self._state

    @property
    def shares_inbox(self) -> bool:
        return self.step.shares_inbox

    @shares_inbox.setter
    def shares_inbox(self, value: bool) -> None:
        self.step.shares_inbox = value

    @property
    def inline_max_s(self) -> float:
        return self._judge.limit_s

    @property
    def finished(self) -> bool:
        """Stopped and done: nothing held will be run or answered any more by it."""
        return self._stopped.is_set()

    # ---- lifecycle (owner's threads) ------------------------------------------------------
    def start(self, inline_max_s: float = 0.0, prepare: Callable[[], None] | None = None) -> None:
        """Start computing: on a thread of its own, or inline when ``inline_max_s`` > 0.
        ``prepare`` (threaded only) runs first on that thread: see ``wait_prepared``."""
        with self._lock:
            if self._state is not State.NEW:
                raise RuntimeError(f"{self.name} already started ({self._state.value})")
            self._judge = InlineJudge(inline_max_s)
            self._prepare = prepare
            if inline_max_s > 0 and prepare is None:
                self.inline = True
                self._state = State.INLINE
            else:
                self._start_thread(State.THREADED)

    def stop(self) -> None:
        """Finish what was queued before this call, then stop. An inline instance's leftovers
        go to its thread, so no caller has to pump it."""
        with self._lock:
            self.inbox.put(STOP)
            if self._state is State.INLINE:
                self._start_thread(State.DRAINING)
            elif self._state is State.THREADED:
                self._state = State.DRAINING
            # NEW: the STOP waits for whoever starts it; DRAINING/STOPPED: a repeated stop
            # (the owner refused leftovers and took the first STOP with them).

    def wait_prepared(self, timeout_s: float) -> None:
        """Wait for ``prepare`` to finish on the instance's thread; raises what it raised (the
        thread has then ended) or TimeoutError."""
        if self._prepare is None:
            return
        if not self._prepared.wait(timeout_s):
            raise TimeoutError(f"{self.name}: not prepared after {timeout_s:.0f} s")
        if self._prepare_error is not None:
            raise self._prepare_error

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the instance to finish; never runs its work."""
        give_up = time.monotonic() + timeout_s
        if self._stopped.wait(timeout_s) and self._thread.ident is not None:
            # The thread set ``_stopped`` as its last act; this waits out its return.
            self._thread.join(max(0.0, give_up - time.monotonic()))

    def _start_thread(self, state: State) -> None:
        """Hand the step to the instance's thread; under ``_lock``. The caller touches the
        step no more."""
        self._state = state
        self._thread.start()

    # ---- inline driver (the owner's I/O thread) -------------------------------------------
    def pump(self) -> float | None:
        """Run at most one ready batch, never block. Returns seconds until this instance wants
        to be pumped again (0 = at once), or None when it holds nothing (or runs elsewhere)."""
        with self._lock:
            if self._state is not State.INLINE:
                return None
            step = self.step
            batch: list[Waiting[Ready]] = []
            try:
                batch, wait_s = step.next_batch(self._refill)
                if not batch:
                    if step.done:
                        self._state = State.STOPPED
                        self._stopped.set()
                    return wait_s
                started, cpu_started = time.monotonic(), time.thread_time()
                step.run(batch)
                took_s = time.monotonic() - started
                if self._judge.too_slow(took_s, time.thread_time() - cpu_started):
                    self._leave_inline(took_s)
            except Exception as exc:
                step.fail_batch(batch, exc)
            return 0.0

    def _leave_inline(self, took_s: float) -> None:
        logger.info(
            "%s: a batch took %.1f ms (inline limit %.1f ms); computing on its own thread now",
            self.name,
            took_s * 1e3,
            self._judge.limit_s * 1e3,
        )
        self.inline = False
        self._start_thread(State.THREADED)

    # ---- threaded driver (the instance's thread) ------------------------------------------
    def _run(self) -> None:
        if self._prepare is not None and not self._prepared.is_set():
            try:
                self._prepare()
            except BaseException as exc:
                self._prepare_error = exc
                with self._lock:
                    self._state = State.STOPPED
                self._stopped.set()
                return
            finally:
                self._prepared.set()
        batch: list[Waiting[Ready]] = []
        while True:
            try:
                if self._turn(batch):
                    break
            except Exception as exc:
                self.step.fail_batch(batch, exc)
            batch.clear()
        with self._lock:
            self._state = State.STOPPED
        self._stopped.set()

    def _turn(self, current: list[Waiting[Ready]]) -> bool:
        """Run batches until the step is done (True); ``current`` holds the running batch, so
        that an unexpected error fails that batch only."""
        step, inbox = self.step, self.inbox
        while True:
            batch, wait_s = step.next_batch(self._refill)
            if batch:
                current[:] = batch
                step.run(batch)
                current.clear()
                continue
            if step.stopping:
                return True
            try:
                item = inbox.get(timeout=wait_s) if wait_s is not None else inbox.get()
            except queue.Empty:
                continue
            step.take(item)

    # ---- both drivers ---------------------------------------------------------------------
    def _refill(self) -> None:
        """Take what waits in the inbox while the step has room (see ``BatchStep.wants_more``);
        the rest stays for the other instances sharing the inbox."""
        step, inbox = self.step, self.inbox
        while step.wants_more:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            step.take(item)
