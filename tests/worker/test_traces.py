"""worker.traces through BatchStep.run: a batch that served traced requests yields a queue and
a reply span per traced request (children of the context its header carried) and one batch
span linked to all of them; untraced requests add nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fabric import errors, tracing
from worker.batch_step import BatchStep, CancelBoard
from worker.loaders import load_model
from worker.repository import scan_model
from worker.stats import ModelStats
from worker.traces import record_batch

from .test_runtime import Replies, batching, inbound, ragged_rows, request_bytes, write_model

TRACE_A, TRACE_B = 0xA1 << 64, 0xB2 << 64
SPAN_A, SPAN_B = 0x1111, 0x2222


def context(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install_for_tests("worker", exporter)
    yield exporter
    tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def parent_span_id(span: ReadableSpan) -> int:
    assert span.parent is not None
    return span.parent.span_id


def test_a_batch_with_two_traced_and_two_untraced_requests(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    model = load_model(
        scan_model(write_model(tmp_path, "m", "ragged", batching((4,), 0))), 1, "cpu"
    )
    replies = Replies()
    step = BatchStep(model, "m-0", replies, ModelStats(), CancelBoard())
    traces = [context(TRACE_A, SPAN_A), "", context(TRACE_B, SPAN_B), ""]
    for i, trace in enumerate(traces):
        item = inbound(i, request_bytes({"X": ragged_rows(1, 3, seed=i)}))
        item.header.trace = trace
        step.take(item)
    batch, _ = step.next_batch(lambda: None)
    assert len(batch) == 4
    step.run(batch)
    assert {r.status for r in replies.by_id().values()} == {errors.OK}

    got = by_name(spans)
    assert sorted(got) == ["worker batch", "worker queue", "worker reply"]
    (batch_span,) = got["worker batch"]
    queues, replies_ = got["worker queue"], got["worker reply"]
    assert sorted(parent_span_id(s) for s in queues) == [SPAN_A, SPAN_B]
    assert sorted(parent_span_id(s) for s in replies_) == [SPAN_A, SPAN_B]
    for s in (*queues, *replies_):
        assert s.context is not None and s.parent is not None
        assert s.context.trace_id == s.parent.trace_id  # in the caller's trace
    assert batch_span.context is not None and batch_span.context.trace_id == TRACE_A
    assert parent_span_id(batch_span) == SPAN_A
    assert sorted((link.context.trace_id, link.context.span_id) for link in batch_span.links) == [
        (TRACE_A, SPAN_A),
        (TRACE_B, SPAN_B),
    ]
    attributes = dict(batch_span.attributes or {})
    assert attributes["batch.requests"] == 4 and attributes["batch.rows"] == 4
    assert attributes["model"] == "m" and attributes["status"] == errors.OK
    assert [e.name for e in batch_span.events] == ["infer_start", "infer_end"]
    # the phases follow each other: queue wait, batch, reply (which ends with the batch)
    assert batch_span.start_time is not None and batch_span.end_time is not None
    for q in queues:
        assert q.start_time is not None and q.start_time <= batch_span.start_time
        assert q.end_time == batch_span.start_time
    for r in replies_:
        assert r.end_time == batch_span.end_time
        assert r.start_time == batch_span.events[1].timestamp


def test_a_batch_without_traced_requests_makes_no_span(spans: InMemorySpanExporter) -> None:
    items = [inbound(1, b""), inbound(2, b"")]
    record_batch("m", "1", items, 2, 1.0, (1.1, 1.2), 1.3, errors.OK)
    assert spans.get_finished_spans() == ()


def test_a_failed_batch_is_an_error_span_and_still_answers_in_the_trace(
    spans: InMemorySpanExporter,
) -> None:
    item = inbound(1, b"")
    item.header.trace = context(TRACE_A, SPAN_A)
    record_batch("m", "1", [item], 1, item.received_s, None, item.received_s + 0.01, "INTERNAL")
    got = by_name(spans)
    (batch_span,) = got["worker batch"]
    assert batch_span.status.status_code is StatusCode.ERROR
    assert batch_span.events == ()
    assert len(got["worker queue"]) == 1 and len(got["worker reply"]) == 1
