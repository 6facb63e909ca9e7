"""Decoupled models on the worker: one request, any number of responses, sent as the model
yields them, with a bounded window of responses the reader has not taken yet.

The Python model API: a ``model.py`` whose config says ``model_transaction_policy { decoupled:
true }`` defines ``execute(self, inputs)`` as a generator; each value it yields is one
response's outputs (a dict by output name, a tuple in config order, or one value), checked
against the config like any output. The request ends when the generator returns; raising
``RequestError`` ends it with that status. Such a model runs one request at a time per
instance (no batching across requests).

Each response goes out as a REPLY with ``more`` set and Triton's ``triton_final_response``
parameter false; the last REPLY (``more`` unset) carries, when the request asked for it with
``triton_enable_empty_final_response``, an empty response whose ``triton_final_response`` is
true, and nothing otherwise (the frontend sends nothing for it).

Backpressure: the worker sends at most ``DECOUPLED_WINDOW`` responses beyond those the reader
took (the frontend grants CREDIT as its gRPC stream hands responses to the client); at the
bound it stops pulling from the generator, so a slow reader pauses generation instead of
growing any queue. Cancellation (CANCEL) and the request's deadline end the generation
between two responses, closing the generator (its ``finally`` blocks run).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fabric import errors
from fabric.deadlines import to_monotonic
from fabric.errors import RequestError
from fabric.protocol import DECOUPLED_WINDOW, PeerId
from protos import grpc_service_pb2 as pb

from .codec import encode_response

logger = logging.getLogger(__name__)

StreamKey = tuple[PeerId, int]  # (frontend route, request id), as cancellations are keyed
FINAL_PARAMETER = "triton_final_response"
EMPTY_FINAL_PARAMETER = "triton_enable_empty_final_response"
_NOT_FINAL = pb.ModelInferResponse(
    parameters={FINAL_PARAMETER: pb.InferParameter(bool_param=False)}
).SerializeToString()
"""Appended to a serialized response: protobuf merges it in (a map entry is a repeated field)."""


class StreamWindows:
    """Credit of the decoupled requests in progress on one model version. The I/O thread
    grants (CREDIT) and wakes (CANCEL); the compute thread running a request waits on it."""

    def __init__(self, window: int = DECOUPLED_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._granted: dict[StreamKey, int] = {}

    def __len__(self) -> int:
        return len(self._granted)

    def open(self, key: StreamKey) -> None:
        with self._cond:
            self._granted[key] = self.window

    def close(self, key: StreamKey) -> None:
        with self._cond:
            self._granted.pop(key, None)

    def grant(self, key: StreamKey, responses: int) -> None:
        """The reader took ``responses`` more; unknown keys (finished requests) are ignored."""
        with self._cond:
            if key in self._granted and responses > 0:
                self._granted[key] += responses
                self._cond.notify_all()

    def wake(self) -> None:
        """Something a waiter checks (a cancellation) changed."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, key: StreamKey, sent: int, until_s: float, stop: Callable[[], bool]) -> bool:
        """Block until the request may send response ``sent + 1``: True; False when ``stop()``
        says so or ``until_s`` (monotonic) passes first."""
        with self._cond:
            while self._granted.get(key, 0) <= sent:
                if stop():
                    return False
                remaining = until_s - self._clock()
                if remaining <= 0:
                    return False
                # Bounded: a cancellation that raced the check above is seen within 0.1 s.
                self._cond.wait(min(remaining, 0.1))
            return True


# (frontend, request id, status, message, body, more)
SendPart = Callable[[PeerId, int, str, str, "bytes | None", bool], None]


def run_decoupled(
    model: Any,
    request: Any,
    frontend: PeerId,
    request_id: int,
    deadline_ns: int,
    send: SendPart,
    flush: Callable[[], None],
    windows: StreamWindows,
    cancelled: Callable[[StreamKey], bool],
) -> int:
    """Run one request of a decoupled model to its end and answer it; returns the number of
    responses sent. ``cancelled(key)`` consumes a pending cancellation of the request."""
    key = (frontend, request_id)
    spec = model.spec
    deadline_s = to_monotonic(deadline_ns)
    until_s = deadline_s if deadline_s is not None else math.inf
    status, message = errors.OK, ""
    sent = 0
    stream = getattr(model, "execute_stream", None)
    if stream is None:
        why = f"model '{spec.name}' is decoupled, which only model.py models can be"
        send(frontend, request_id, errors.INTERNAL, why, None, False)
        flush()
        return 0
    windows.open(key)
    responses: Iterator[dict[str, np.ndarray]] | None = None
    try:
        responses = stream(request.inputs)
        for outputs in responses:
            body = encode_response(request, spec.name, model.version, outputs) + _NOT_FINAL
            send(frontend, request_id, errors.OK, "", body, True)
            flush()
            sent += 1
            if not windows.wait(key, sent, until_s, lambda: cancelled(key)):
                status, message = _why_stopped(until_s)
                break
            if cancelled(key):
                status, message = errors.CANCELLED, "cancelled while streaming responses"
                break
    except RequestError as exc:
        status, message = exc.code, exc.message
    except Exception as exc:
        logger.exception("model %s: decoupled request failed", spec.name)
        status, message = errors.INTERNAL, f"model '{spec.name}' failed: {exc}"
    finally:
        windows.close(key)
        if responses is not None and hasattr(responses, "close"):
            responses.close()  # runs the model's cleanup when it stopped early
    final: bytes | None = None
    if status == errors.OK and request.parameters.get(EMPTY_FINAL_PARAMETER) is True:
        final = pb.ModelInferResponse(
            model_name=spec.name,
            model_version=model.version,
            id=getattr(request, "id", ""),
            parameters={FINAL_PARAMETER: pb.InferParameter(bool_param=True)},
        ).SerializeToString()
    send(frontend, request_id, status, message, final, False)
    flush()
    return sent


def _why_stopped(until_s: float) -> tuple[str, str]:
    if time.monotonic() >= until_s:
        return errors.DEADLINE_EXCEEDED, "deadline passed while streaming responses"
    return errors.CANCELLED, "cancelled while streaming responses"
