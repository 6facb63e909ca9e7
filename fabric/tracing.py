"""OpenTelemetry tracing for every tier: set-up from the standard OTEL_* environment variables,
and the trace context as it travels in ``RequestHeader.trace``.

Off unless configured: with neither an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) nor ``OTEL_TRACES_EXPORTER`` set, ``configure`` installs
nothing, ``ENABLED`` stays False and no tier makes a span object: the per-request cost is one
check of ``ENABLED`` (or of an empty ``RequestHeader.trace``). The SDK and the exporters are
imported only when tracing is configured, and the OTLP/gRPC exporter (which imports grpc) only
when that protocol is chosen, so the broker and ``fabric`` stay grpc-free by default.

What the SDK reads itself: the exporters' endpoint, headers, timeout, compression and
certificate variables, ``OTEL_BSP_*`` (batching), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. What this module decides: whether to trace at all, which exporter
(``OTEL_TRACES_EXPORTER``: otlp, console or none; default otlp when an endpoint is set), which
OTLP protocol (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: grpc, the default, or http/protobuf),
and the service name when none is given (the tier: frontend, broker, worker). Sampling is the
frontend's decision (``frontend.trace_settings``); the SDK's sampler is always-on, because
spans are only ever started for calls the frontend sampled.

Header encoding (``format_trace`` / ``parse_trace``): the W3C ``traceparent`` of the span the
next tier is to continue, followed by ``;`` and the ``tracestate`` when there is one; "" means
"not sampled" and makes no span anywhere.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from .curve import FabricSetupError

logger = logging.getLogger(__name__)

ENABLED = False
"""True once ``configure`` installed an exporter; checked once per request by every tier."""

TIERS = ("frontend", "broker", "worker")
PROTOCOLS = ("grpc", "http/protobuf")
EXPORTERS = ("otlp", "console")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
SHUTDOWN_TIMEOUT_MS = 5_000
"""How long a stopping process waits for its last spans to be exported."""

_tracer: trace.Tracer = trace.NoOpTracer()
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once configured

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TracingSetupError(FabricSetupError):
    """The OTEL_* variables ask for something this build cannot do: one line, exit 2."""


@dataclass(frozen=True)
class ExportPlan:
    """What the environment asks for: an exporter kind and, for OTLP, its protocol."""

    exporters: tuple[str, ...]  # each "otlp" or "console"; empty: tracing off
    protocol: str = "grpc"
    sampler: str = DEFAULT_SAMPLER  # OTEL_TRACES_SAMPLER, read by the frontend's sampling
    sampler_arg: str = ""  # OTEL_TRACES_SAMPLER_ARG

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


PLAN = ExportPlan(())
"""What ``configure`` read; the frontend's initial sampling comes from its sampler fields."""


def export_plan(env: Mapping[str, str]) -> ExportPlan:
    """Read the exporter variables (pure). Raises TracingSetupError on values we cannot honour."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ExportPlan(())
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names:
        names = ["otlp"] if endpoint else []
    if "none" in names:
        if len(names) > 1:
            raise TracingSetupError(f"OTEL_TRACES_EXPORTER: 'none' with others ({names})")
        return ExportPlan(())
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingSetupError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {unknown[0]!r} "
            f"(choose from {', '.join(EXPORTERS)}, none)"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if "otlp" in names and protocol not in PROTOCOLS:
        raise TracingSetupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} "
            f"(choose from {', '.join(PROTOCOLS)})"
        )
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise TracingSetupError(
            f"OTEL_TRACES_SAMPLER: unsupported sampler {sampler!r} "
            f"(choose from {', '.join(SAMPLERS)})"
        )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler.endswith("traceidratio") and arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingSetupError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio in [0, 1]")
    return ExportPlan(tuple(dict.fromkeys(names)), protocol, sampler, arg)


def configure(tier: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install tracing for this process as the environment says; True when it is on. Called
    once from each tier's ``__main__``."""
    global PLAN
    env = os.environ if environ is None else environ
    plan = PLAN = export_plan(env)
    if not plan.enabled:
        return False
    exporters = [_exporter(kind, plan.protocol) for kind in plan.exporters]
    _install(tier, exporters, batch=True)
    logger.info(
        "tracing on: %s%s",
        ", ".join(plan.exporters),
        f" over {plan.protocol}" if "otlp" in plan.exporters else "",
    )
    return True


def _exporter(kind: str, protocol: str) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":  # imports grpc: only here, only when asked for
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def _install(tier: str, exporters: list[Any], *, batch: bool) -> None:
    """A provider exporting to ``exporters``; ``batch`` False exports each span as it ends
    (tests)."""
    global ENABLED, _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: tier}))
    shutdown()
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    for exporter in exporters:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("fabricserve")
    ENABLED = True


def install_for_tests(tier: str, exporter: Any) -> None:
    """Trace into ``exporter`` (e.g. the SDK's InMemorySpanExporter), one span at a time."""
    _install(tier, [exporter], batch=False)


def shutdown() -> None:
    """Export what is buffered (bounded by ``SHUTDOWN_TIMEOUT_MS``) and turn tracing off."""
    global ENABLED, _provider, _tracer
    provider, _provider = _provider, None
    ENABLED = False
    _tracer = trace.NoOpTracer()
    if provider is not None:
        provider.force_flush(SHUTDOWN_TIMEOUT_MS)
        provider.shutdown()


def tracer() -> trace.Tracer:
    return _tracer


# ---- the header's trace context ------------------------------------------------------------


def format_trace(ctx: SpanContext) -> str:
    """``traceparent[;tracestate]`` of ``ctx``: what the next tier continues."""
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return f"{parent};{state}" if state else parent


def parse_traceparent(traceparent: str, tracestate: str = "") -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` names, or None when it is not valid
    (W3C: an invalid traceparent is ignored, the call is traced as if none was given)."""
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == "ff":
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else TraceState()
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(int(flags_hex, 16) & TraceFlags.SAMPLED),
        trace_state=state,
    )


def parse_trace(value: str) -> SpanContext | None:
    """The span context a header's ``trace`` field carries (see ``format_trace``)."""
    if not value:
        return None
    parent, _, state = value.partition(";")
    return parse_traceparent(parent, state)


def parent_context(value: str) -> Context | None:
    """An OpenTelemetry context whose current span is the one a header's ``trace`` names."""
    ctx = parse_trace(value)
    return None if ctx is None else trace.set_span_in_context(NonRecordingSpan(ctx))
