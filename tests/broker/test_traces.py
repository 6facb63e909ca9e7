"""broker.traces through the Dispatcher: a traced request gets a broker span (child of the
frontend's) from receipt to the reply forwarded; the worker receives the broker span's context;
failures, cancels and forgotten requests end their spans; untraced requests make none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from broker.traces import GRACE_S
from fabric import errors, tracing
from fabric.protocol import CancelHeader, RequestHeader, encode_header
from tests.broker.test_dispatcher import FE, W1, W2, Harness

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
FRONTEND_SPAN = 0x00F067AA0BA902B7
TRACED = f"00-{TRACE_ID:032x}-{FRONTEND_SPAN:016x}-01;vendor=x"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install_for_tests("broker", exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
def h(spans: InMemorySpanExporter) -> Harness:
    harness = Harness()
    harness.announce(W1, ("m", "1", 1))
    return harness


def traced_request(h: Harness, rid: int, deadline_ns: int = 0) -> None:
    header = RequestHeader(rid, "m", "1", deadline_ns, TRACED)
    h.d.on_request(FE, header, encode_header(header), b"payload")


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_a_traced_request_is_one_span_from_receipt_to_reply(
    h: Harness, spans: InMemorySpanExporter
) -> None:
    traced_request(h, 1)
    (sent,) = h.sent()
    assert spans.get_finished_spans() == ()  # still open while the worker has it
    h.reply(W1, 1)
    span = only(spans)
    assert span.name == "broker"
    assert span.context is not None and span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == FRONTEND_SPAN
    assert span.resource.attributes["service.name"] == "broker"
    assert [e.name for e in span.events] == ["dispatched"]
    assert dict(span.events[0].attributes or {}) == {"worker": W1.hex()}
    assert dict(span.attributes or {})["status"] == errors.OK
    # the worker continues the broker's span, with the caller's tracestate
    assert sent.header.trace == tracing.format_trace(span.context)
    assert sent.header.trace.endswith(";vendor=x")
    assert (sent.header.request_id, sent.header.model) == (1, "m")


def test_untraced_requests_make_no_span_and_are_forwarded_as_received(
    h: Harness, spans: InMemorySpanExporter
) -> None:
    rid = h.request("m", "1")
    (sent,) = h.sent()
    h.reply(W1, rid)
    assert spans.get_finished_spans() == ()
    assert sent.header.trace == ""


def test_a_requeue_is_an_event_and_the_span_ends_with_the_second_reply(
    h: Harness, spans: InMemorySpanExporter
) -> None:
    h.announce(W2, ("m", "1", 1))
    traced_request(h, 1)
    (first,) = h.sent()
    h.kill_by_silence(first.worker)
    (second,) = h.sent()
    h.reply(second.worker, 1)
    span = only(spans)
    assert [e.name for e in span.events] == ["dispatched", "requeued", "dispatched"]


def test_a_failure_ends_the_span_with_its_status(h: Harness, spans: InMemorySpanExporter) -> None:
    header = RequestHeader(1, "nope", "", 0, TRACED)
    h.d.on_request(FE, header, encode_header(header), b"payload")
    span = only(spans)
    assert dict(span.attributes or {})["status"] == errors.NOT_FOUND
    assert span.status.status_code is StatusCode.ERROR
    assert len(h.d.spans or ()) == 0


def test_a_cancel_while_queued_ends_the_span(h: Harness, spans: InMemorySpanExporter) -> None:
    h.request("m", "1")  # takes the only credit
    traced_request(h, 7)
    assert h.d.queues.depth(("m", "1")) == 1
    h.d.on_cancel(FE, CancelHeader(7))
    assert dict(only(spans).attributes or {})["status"] == errors.CANCELLED


def test_a_forgotten_request_is_ended_after_its_deadline(
    h: Harness, spans: InMemorySpanExporter
) -> None:
    traced_request(h, 1, deadline_ns=h.clocks.wall_ns + 1_000_000_000)
    h.sent()
    h.clocks.advance(1.0 + GRACE_S - 0.1)
    assert h.d.on_worker_seen(W1)  # the worker lives on; the reply never comes
    h.d.tick()
    assert spans.get_finished_spans() == ()
    h.clocks.advance(0.2)
    h.d.tick()
    assert dict(only(spans).attributes or {})["status"] == errors.DEADLINE_EXCEEDED


def test_without_tracing_the_dispatcher_holds_no_spans() -> None:
    assert Harness().d.spans is None
