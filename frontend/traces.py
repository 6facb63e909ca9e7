"""The frontend's spans: one SERVER span per sampled inference call, continuing the caller's W3C
trace context, and the context it hands to the fabric.

Only used while ``fabric.tracing.ENABLED``: ``InferenceService`` calls ``CallTracer.infer``
instead of its own ``infer`` then. A call the ``TraceSettings`` do not sample runs untraced
and carries "" in ``RequestHeader.trace``, so no tier makes a span for it. A sampled call's
span is current (an OpenTelemetry context) while the call runs, and ``CALL_TRACE`` holds its
``traceparent[;tracestate]`` for ``InferenceService._attempts`` to put in every copy's header.

Span ``ModelInfer`` (or ``ModelStreamInfer``), kind SERVER, attributes ``model``,
``model.version`` (as requested; "" = latest), ``status`` (the gRPC status name of the answer);
events ``retry`` and ``hedge`` (``note_resend``) and ``route`` (``annotate_route``, for the
routing code).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode

from fabric import errors, tracing

from .fabric_client import Reply
from .streams import Infer
from .trace_settings import TraceSettings
from .wire import RequestRoute

CALL_TRACE: ContextVar[str] = ContextVar("call_trace", default="")
"""The header ``trace`` value of the call running in this context ("" when not traced)."""

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def caller_context(metadata: Iterable[Any] | None) -> trace.SpanContext | None:
    """The caller's span context from gRPC invocation metadata (None when it sent no valid
    ``traceparent``)."""
    parent = state = ""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == TRACEPARENT:
            parent = value if isinstance(value, str) else ""
        elif key == TRACESTATE:
            state = value if isinstance(value, str) else ""
    return tracing.parse_traceparent(parent, state) if parent else None


class CallTracer:
    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings

    def bind(self, infer: Infer, metadata: Iterable[Any] | None, method: str) -> Infer:
        """``infer`` traced as calls of ``method`` with the caller's ``metadata`` (streams)."""

        async def traced(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
            return await self.infer(infer, route, payload, remaining_s, metadata, method)

        return traced

    async def infer(
        self,
        infer: Infer,
        route: RequestRoute,
        payload: bytes,
        remaining_s: float | None,
        metadata: Iterable[Any] | None,
        method: str = "ModelInfer",
    ) -> Reply:
        parent = caller_context(metadata)
        sampled = None if parent is None else parent.trace_flags.sampled
        if not self.settings.decide(route.model, sampled):
            return await infer(route, payload, remaining_s)
        context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
        span = tracing.tracer().start_span(
            method,
            context=context,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": method,
                "model": route.model,
                "model.version": route.version,
            },
        )
        token = CALL_TRACE.set(tracing.format_trace(span.get_span_context()))
        status = errors.CANCELLED
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                reply = await infer(route, payload, remaining_s)
            status = reply.status
            return reply
        finally:
            CALL_TRACE.reset(token)
            span.set_attribute("status", status)
            if status != errors.OK:
                span.set_status(Status(StatusCode.ERROR, status))
            span.end()


def current_call_span() -> Span | None:
    """The span of the call running in this context, or None when it is not traced."""
    if not tracing.ENABLED:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def note_resend(hedge: bool, retry: int, after: str) -> None:
    """A retry or hedge of the current call, as an event of its span (when traced)."""
    span = current_call_span()
    if span is None:
        return
    if hedge:
        span.add_event("hedge", {"retry": retry})
    else:
        span.add_event("retry", {"retry": retry, "after": after})


def annotate_route(span: Span | None, route: str, target: str) -> None:
    """The routing decision of a call (``route``: the rule or kind, e.g. "canary"; ``target``:
    the chosen model version) as a ``route`` event of its span. For the routing code: call it
    with ``current_call_span()``; a call that is not traced costs nothing more."""
    if span is not None:
        span.add_event("route", {"route": route, "target": target})
