"""The worker's spans for a batch that served traced requests, made after the batch ran (from
the timestamps the step took anyway, so tracing adds no work inside the batch).

Per traced request (its header's ``trace`` is the broker span's context, so these are its
children): ``worker queue`` from its receipt by the worker to the start of its batch, and
``worker reply`` from the end of the model's execution to the replies handed to the I/O thread
(split, encode, send). Per batch: one ``worker batch`` span, from the batch's start to its end,
a child of the first traced request's context and LINKED to the context of every traced
request it served (a batch serves many calls, each its own trace), with events ``infer_start``
and ``infer_end`` and attributes ``batch.requests``, ``batch.rows``, ``status``.

``BatchStep.run`` calls ``record_batch`` only while ``fabric.tracing.ENABLED``; a batch without
traced requests then costs one pass over its headers. Times are the step's monotonic clock
(``time.monotonic``), mapped to wall-clock nanoseconds here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from fabric import errors, tracing

if TYPE_CHECKING:
    from .batch_step import Inbound


def _wall_ns(offset_ns: int, monotonic_s: float) -> int:
    return offset_ns + int(monotonic_s * 1e9)


def _parent(ctx: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def record_batch(
    model: str,
    version: str,
    inbounds: Sequence[Inbound],
    rows: int,
    start_s: float,
    infer_s: tuple[float, float] | None,
    end_s: float,
    status: str,
) -> None:
    """Spans for the traced requests of one batch that ran from ``start_s`` to ``end_s``
    (monotonic seconds); ``infer_s``: (start, end) of the model's execution, None when the
    batch failed before or during it."""
    traced: list[tuple[Inbound, SpanContext]] = []
    for inbound in inbounds:
        ctx = tracing.parse_trace(inbound.header.trace)
        if ctx is not None:
            traced.append((inbound, ctx))
    if not traced:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    tracer = tracing.tracer()
    start_ns, end_ns = _wall_ns(offset_ns, start_s), _wall_ns(offset_ns, end_s)
    attributes = {"model": model, "model.version": version}
    for inbound, ctx in traced:
        queued = tracer.start_span(
            "worker queue",
            context=_parent(ctx),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_wall_ns(offset_ns, inbound.received_s),
        )
        queued.end(end_time=start_ns)
    batch = tracer.start_span(
        "worker batch",
        context=_parent(traced[0][1]),
        kind=SpanKind.INTERNAL,
        attributes={
            **attributes,
            "batch.requests": len(inbounds),
            "batch.rows": rows,
            "status": status,
        },
        links=[Link(ctx) for _, ctx in traced],
        start_time=start_ns,
    )
    if infer_s is not None:
        batch.add_event("infer_start", timestamp=_wall_ns(offset_ns, infer_s[0]))
        batch.add_event("infer_end", timestamp=_wall_ns(offset_ns, infer_s[1]))
    if status != errors.OK:
        batch.set_status(Status(StatusCode.ERROR, status))
    batch.end(end_time=end_ns)
    reply_start_ns = _wall_ns(offset_ns, infer_s[1]) if infer_s is not None else end_ns
    for _, ctx in traced:
        reply = tracer.start_span(
            "worker reply",
            context=_parent(ctx),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=reply_start_ns,
        )
        reply.end(end_time=end_ns)
