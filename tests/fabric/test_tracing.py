"""fabric.tracing: which OTEL_* settings turn tracing on and how, and the header's trace context
(W3C traceparent[;tracestate]) in both directions."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from fabric import tracing
from fabric.tracing import ExportPlan, TracingSetupError, export_plan

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.install_for_tests("broker", spans)
    yield spans
    tracing.shutdown()


# ---- set-up from the environment ------------------------------------------------------------


def test_nothing_set_means_off() -> None:
    plan = export_plan({})
    assert plan == ExportPlan(())
    assert not plan.enabled


def test_an_endpoint_alone_means_otlp_over_grpc() -> None:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        plan = export_plan({key: "http://collector:4317"})
        assert plan.exporters == ("otlp",)
        assert plan.protocol == "grpc"
        assert plan.sampler == "parentbased_always_on"


def test_protocol_http_and_the_traces_specific_variable_wins() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert export_plan(env).protocol == "http/protobuf"


def test_exporter_variable_without_endpoint() -> None:
    assert export_plan({"OTEL_TRACES_EXPORTER": "console"}).exporters == ("console",)
    assert export_plan({"OTEL_TRACES_EXPORTER": "otlp,console"}).exporters == ("otlp", "console")
    assert not export_plan(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    ).enabled
    assert not export_plan(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    ).enabled


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unsupported exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "'none' with others"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "unsupported protocol 'http/json'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "jaeger_remote"},
            "unsupported sampler 'jaeger_remote'",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            "not a ratio",
        ),
    ],
)
def test_what_cannot_be_honoured_is_a_setup_error(env: dict[str, str], says: str) -> None:
    with pytest.raises(TracingSetupError, match=says):
        export_plan(env)


def test_configure_with_nothing_set_installs_nothing() -> None:
    assert tracing.configure("broker", {}) is False
    assert tracing.ENABLED is False
    assert not tracing.PLAN.enabled


def test_configure_turns_tracing_on_and_shutdown_off() -> None:
    try:
        assert tracing.configure("worker", {"OTEL_TRACES_EXPORTER": "console"}) is True
        assert tracing.ENABLED is True
        assert tracing.tracer().start_span("probe").is_recording()
    finally:
        tracing.shutdown()
    assert tracing.ENABLED is False
    assert not tracing.tracer().start_span("after").is_recording()


def test_exporter_follows_the_protocol() -> None:
    grpc_exporter = tracing._exporter("otlp", "grpc")
    http_exporter = tracing._exporter("otlp", "http/protobuf")
    try:
        assert type(grpc_exporter).__module__.endswith("proto.grpc.trace_exporter")
        assert type(http_exporter).__module__.endswith("proto.http.trace_exporter")
    finally:
        grpc_exporter.shutdown()
        http_exporter.shutdown()


def test_service_name_defaults_to_the_tier(exporter: InMemorySpanExporter) -> None:
    tracing.tracer().start_span("x").end()
    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "broker"


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-frontend")
    spans = InMemorySpanExporter()
    tracing.install_for_tests("frontend", spans)
    try:
        tracing.tracer().start_span("x").end()
    finally:
        tracing.shutdown()
    assert spans.get_finished_spans()[0].resource.attributes["service.name"] == "edge-frontend"


# ---- the header's trace context --------------------------------------------------------------


def test_traceparent_round_trip_with_and_without_tracestate() -> None:
    ctx = tracing.parse_trace(PARENT)
    assert ctx is not None
    assert ctx.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert ctx.span_id == 0xB7AD6B7169203331
    assert ctx.trace_flags.sampled
    assert ctx.is_remote
    assert tracing.format_trace(ctx) == PARENT
    with_state = f"{PARENT};congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    ctx = tracing.parse_trace(with_state)
    assert ctx is not None
    assert ctx.trace_state.get("congo") == "t61rcWkgMzE"
    assert tracing.format_trace(ctx) == with_state


def test_format_of_a_local_context() -> None:
    ctx = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1), trace_state=TraceState())
    assert tracing.format_trace(ctx) == f"00-{1:032x}-{2:016x}-01"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    ],
)
def test_invalid_contexts_are_ignored(value: str) -> None:
    assert tracing.parse_trace(value) is None
    assert tracing.parent_context(value) is None


def test_unsampled_flag_is_kept() -> None:
    ctx = tracing.parse_traceparent(PARENT[:-2] + "00")
    assert ctx is not None and not ctx.trace_flags.sampled


def test_spans_continue_the_parsed_context(exporter: InMemorySpanExporter) -> None:
    tracing.tracer().start_span("child", context=tracing.parent_context(PARENT)).end()
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331


def test_a_tier_told_something_it_cannot_do_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "zipkin"
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--frontend-bind", "tcp://127.0.0.1:0",
         "--worker-bind", "tcp://127.0.0.1:0"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "serve-broker: error: OTEL_TRACES_EXPORTER: unsupported exporter 'zipkin' "
        "(choose from otlp, console, none)"
    )
