"""The broker's span per traced request: from its receipt to the reply forwarded (or the failure
answered), covering the time queued and dispatched.

Only made when ``fabric.tracing.ENABLED`` and the request's header carries a trace context
(the frontend sampled the call): ``Dispatcher`` holds a ``RequestSpans`` then, and None
otherwise, so an untraced request costs one check of an empty string. The span, ``broker``
(kind INTERNAL), is a child of the frontend's span; its own context replaces the header's
``trace`` before the request goes to a worker, so the worker's spans are its children. Events:
``dispatched`` (to which worker, each time), ``requeued``; attribute ``status`` at the end.

Spans are keyed like leases, by (frontend identity, request id). One whose request the broker
forgets without answering (its frontend vanished) is ended ``GRACE_S`` after its deadline
(or after ``ORPHAN_S``) by ``sweep``, so none is held for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from fabric import errors, tracing
from fabric.protocol import PeerId, RequestHeader, encode_header

from .queues import RequestKey

ORPHAN_S = 300.0
"""A span without deadline still open this long after its start is ended by ``sweep``."""
GRACE_S = 5.0
"""A worker may answer this long after the deadline (DEADLINE_EXCEEDED) before ``sweep``."""


class RequestSpans:
    def __init__(self, wall_clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = wall_clock_ns
        # request key -> (span, the time it is given up on, ns since the epoch)
        self._open: dict[RequestKey, tuple[Span, int]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def start(self, frontend: PeerId, header: RequestHeader) -> bytes | None:
        """Start the span of a traced request; returns the header to forward in place of the
        received one (carrying this span's context), or None when the context is unusable."""
        parent = tracing.parent_context(header.trace)
        if parent is None:
            return None
        span = tracing.tracer().start_span(
            "broker",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"model": header.model, "model.version": header.version},
        )
        if header.deadline_ns:
            give_up = header.deadline_ns + int(GRACE_S * 1e9)
        else:
            give_up = self._now_ns() + int(ORPHAN_S * 1e9)
        key = (frontend, header.request_id)
        previous = self._open.pop(key, None)
        if previous is not None:  # an id reused by a restarted frontend
            previous[0].end()
        self._open[key] = (span, give_up)
        trace_value = tracing.format_trace(span.get_span_context())
        return encode_header(msgspec.structs.replace(header, trace=trace_value))

    def event(self, key: RequestKey, name: str, worker: PeerId | None = None) -> None:
        entry = self._open.get(key)
        if entry is not None:
            entry[0].add_event(name, {"worker": worker.hex()} if worker is not None else {})

    def finish(self, key: RequestKey, status: str) -> None:
        """The request is answered (or dropped): end its span with ``status``."""
        entry = self._open.pop(key, None)
        if entry is None:
            return
        span = entry[0]
        span.set_attribute("status", status)
        if status != errors.OK:
            span.set_status(Status(StatusCode.ERROR, status))
        span.end()

    def sweep(self) -> None:
        """End the spans of requests given up on without an answer (see module docstring)."""
        now = self._now_ns()
        for key in [k for k, (_, give_up) in self._open.items() if give_up <= now]:
            self.finish(key, errors.DEADLINE_EXCEEDED)

    def close(self) -> None:
        for key in list(self._open):
            self.finish(key, errors.UNAVAILABLE)
