"""frontend.traces with InferenceService: a sampled call gets one SERVER span continuing the
caller's traceparent, and every copy it sends carries that span's context; an unsampled call
makes no span and sends ""; retries and hedges are span events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fabric import errors, tracing
from frontend.config import FrontendConfig
from frontend.inference_service import InferenceService
from frontend.trace_settings import TraceSettings, Values
from frontend.traces import (
    CALL_TRACE,
    CallTracer,
    annotate_route,
    caller_context,
    current_call_span,
)
from frontend.wire import RequestRoute
from protos import grpc_service_pb2 as pb
from tests.frontend.test_inference_attempts import OK, UNAVAILABLE, ScriptedClient

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331
SAMPLED = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"
NOT_SAMPLED = SAMPLED[:-2] + "00"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install_for_tests("frontend", exporter)
    yield exporter
    tracing.shutdown()


class Context:
    """The parts of grpc.aio.ServicerContext that ModelInfer uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.aborted: tuple[Any, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def service(
    client: ScriptedClient, settings: TraceSettings | None = None, max_retries: int = 2
) -> InferenceService:
    config = FrontendConfig(max_retries=max_retries)
    svc = InferenceService(config, client, "test")  # type: ignore[arg-type]
    svc.trace_settings = settings or TraceSettings(Values())
    svc.tracer = CallTracer(svc.trace_settings)
    return svc


def model_infer(svc: InferenceService, *metadata: tuple[str, str]) -> Context:
    context = Context(tuple(metadata))
    request = pb.ModelInferRequest(model_name="m", id="call-1").SerializeToString()
    try:
        asyncio.run(svc.ModelInfer(request, context))  # type: ignore[arg-type]
    except RuntimeError:
        pass
    return context


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_a_sampled_caller_is_continued_and_the_fabric_gets_the_new_span(
    spans: InMemorySpanExporter,
) -> None:
    client = ScriptedClient([OK])
    model_infer(service(client), ("traceparent", SAMPLED), ("tracestate", "k=v"))
    span = only_span(spans)
    assert span.name == "ModelInfer"
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == CALLER_SPAN
    assert span.attributes is not None
    assert span.attributes["model"] == "m"
    assert span.attributes["status"] == errors.OK
    assert span.resource.attributes["service.name"] == "frontend"
    (submit,) = client.submits
    assert submit["trace"] == tracing.format_trace(span.context)  # type: ignore[comparison-overlap]
    assert str(submit["trace"]).endswith(";k=v")


def test_a_call_without_caller_context_starts_a_trace(spans: InMemorySpanExporter) -> None:
    client = ScriptedClient([OK])
    model_infer(service(client))
    span = only_span(spans)
    assert span.parent is None
    assert client.submits[0]["trace"] == tracing.format_trace(span.context)  # type: ignore[arg-type,comparison-overlap]


def test_an_unsampled_caller_makes_no_span_and_sends_no_context(
    spans: InMemorySpanExporter,
) -> None:
    client = ScriptedClient([OK])
    model_infer(service(client), ("traceparent", NOT_SAMPLED))
    assert spans.get_finished_spans() == ()
    assert client.submits[0]["trace"] == ""  # type: ignore[comparison-overlap]


def test_a_call_the_rate_skips_makes_no_span(spans: InMemorySpanExporter) -> None:
    client = ScriptedClient([OK, OK])
    svc = service(client, TraceSettings(Values(rate=2)))
    model_infer(svc)
    assert spans.get_finished_spans() == ()
    model_infer(svc)
    assert len(spans.get_finished_spans()) == 1
    first, second = (str(s["trace"]) for s in client.submits)
    assert first == "" and second.startswith("00-")


def test_retries_are_events_and_a_failure_is_the_span_status(
    spans: InMemorySpanExporter,
) -> None:
    client = ScriptedClient([UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE])
    svc = service(client, max_retries=1)
    context = model_infer(svc, ("traceparent", SAMPLED))
    assert context.aborted is not None
    span = only_span(spans)
    assert [e.name for e in span.events] == ["retry"]
    assert span.events[0].attributes == {"retry": 1, "after": errors.UNAVAILABLE}
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["status"] == errors.UNAVAILABLE
    # both copies carried the same span's context
    assert len({s["trace"] for s in client.submits}) == 1


def test_call_trace_is_set_only_inside_a_traced_call(spans: InMemorySpanExporter) -> None:
    seen: list[str] = []

    async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Any:
        seen.append(CALL_TRACE.get())
        annotate_route(current_call_span(), "canary", "2")
        return OK

    tracer = CallTracer(TraceSettings(Values()))
    route = RequestRoute("m", "", "")
    asyncio.run(tracer.infer(infer, route, b"", None, (("traceparent", SAMPLED),)))
    assert CALL_TRACE.get() == ""
    span = only_span(spans)
    assert seen == [tracing.format_trace(span.context)]  # type: ignore[arg-type]
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("route", {"route": "canary", "target": "2"})
    ]


def test_caller_context_reads_only_valid_traceparents() -> None:
    assert caller_context(None) is None
    assert caller_context((("traceparent", "junk"),)) is None
    assert caller_context((("x-other", SAMPLED),)) is None
    ctx = caller_context((("traceparent", SAMPLED), ("tracestate", "a=b")))
    assert ctx is not None and ctx.trace_state.get("a") == "b"


def test_tracing_off_leaves_model_infer_untouched() -> None:
    assert not tracing.ENABLED
    client = ScriptedClient([OK])
    model_infer(service(client), ("traceparent", SAMPLED))
    assert client.submits[0]["trace"] == ""  # type: ignore[comparison-overlap]


def test_server_metadata_reports_the_trace_extension() -> None:
    svc = service(ScriptedClient([]))
    response = asyncio.run(svc.ServerMetadata(pb.ServerMetadataRequest(), None))
    assert "trace" in response.extensions
