"""Traces across the three tiers, exported over OTLP/gRPC to an in-process receiver (the
collector's TraceService from ``opentelemetry-proto``; its protos are ``opentelemetry.proto.*``,
no clash with tritonclient's ``inference.*``).

One call with a ``traceparent`` is one connected trace with spans from the frontend, the broker
and the worker, each span's parent inside the trace, and every worker batch span linked to the
calls it served; a sampled-out call makes no span anywhere; TraceSetting turns tracing off and
on at run time; and a broker restarted while traced calls flow leaves no exporter error in any
log, and traces are whole again after it.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import STACKS_KEY
from tests.integration.helpers import rand_fp32, rand_int32, simple_inputs
from tests.integration.stack import Stack, wait_for

BSP_DELAY_MS = 100
"""OTEL_BSP_SCHEDULE_DELAY of every tier: spans reach the receiver within about this long."""
SPANS_TIMEOUT_S = 20.0
PER_CALL_SPAN_NAMES = {"ModelInfer", "broker", "worker queue", "worker reply"}
"""Every traced call has these in its trace; its batch span may be in another call's trace."""
EXPORT_ERRORS = (
    "Failed to export",
    "Exception while exporting",
    "Transient error",
    "exporter",
    "Traceback",
)


@dataclass(frozen=True)
class Received:
    service: str
    instance: str
    trace_id: str
    span_id: str
    parent: str
    name: str
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, object] = field(hash=False)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for rs in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attributes: dict[str, object] = {}
                    for kv in s.attributes:
                        kind = kv.value.WhichOneof("value")
                        attributes[kv.key] = getattr(kv.value, kind) if kind else None
                    got.append(
                        Received(
                            resource.get("service.name", ""),
                            resource.get("service.instance.id", ""),
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                            attributes,
                        )
                    )
        with self._lock:
            self._spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str | None = None) -> list[Received]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


@contextlib.contextmanager
def otel_env(port: int) -> Iterator[None]:
    """Processes started inside export to the receiver on ``port``; this process does not."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", str(BSP_DELAY_MS))
        yield


def traced_stack(log_dir: Path, model_repo: Path, port: int, name: str) -> Stack:
    """A broker, a worker and a frontend exporting to the receiver on ``port``."""
    with otel_env(port):
        stack = Stack(log_dir=log_dir, model_repository=model_repo, name=name)
        stack.start_broker()
        stack.start_worker()
        stack.start_frontend()
    try:
        stack.wait_live()
        stack.wait_ready(["simple", "mlp_wait"])
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def _module_stack(
    receiver: tuple[Receiver, int], model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = traced_stack(tmp_path_factory.mktemp("tracing"), model_repo, receiver[1], "traced")
    yield stack
    stack.stop()


@pytest.fixture
def stack(_module_stack: Stack, request: pytest.FixtureRequest) -> Stack:
    request.node.stash.setdefault(STACKS_KEY, []).append(_module_stack)
    return _module_stack


def new_traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(traceparent, trace id, caller span id) of a fresh caller context."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def call_simple(client: grpcclient.InferenceServerClient, traceparent: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    a, b = rand_int32(rng, 1), rand_int32(rng, 1)
    result = client.infer("simple", simple_inputs(a, b), headers={"traceparent": traceparent})
    assert (result.as_numpy("OUTPUT0") == a + b).all()


def whole_trace(
    receiver: Receiver, trace_id: str, with_batch: bool = True
) -> Callable[[], list[Received]]:
    """A predicate: the trace's spans once every kind arrived (else an empty list); the batch
    span is waited for too when the call was alone in its batch (``with_batch``)."""
    wanted = PER_CALL_SPAN_NAMES | ({"worker batch"} if with_batch else set())

    def ready() -> list[Received]:
        spans = receiver.spans(trace_id)
        return spans if wanted <= {s.name for s in spans} else []

    return ready


def check_connected(spans: list[Received], caller_span: str) -> None:
    """Spans of the three services, each parent inside the trace (the root's is the caller)."""
    ids = {s.span_id for s in spans}
    by_name = {s.name: s for s in spans}
    assert {s.service for s in spans} == {"frontend", "broker", "worker"}
    for s in spans:
        assert s.parent in ids or (s.name == "ModelInfer" and s.parent == caller_span), s
    frontend, broker = by_name["ModelInfer"], by_name["broker"]
    assert frontend.service == "frontend" and broker.service == "broker"
    assert broker.parent == frontend.span_id
    for s in spans:
        if s.service == "worker":
            assert s.parent == broker.span_id, s
    assert frontend.attributes["model"] == "simple"
    assert frontend.attributes["status"] == "OK"


def test_one_call_is_one_connected_trace_over_three_processes(
    stack: Stack, receiver: tuple[Receiver, int]
) -> None:
    traceparent, trace_id, caller_span = new_traceparent()
    call_simple(stack.client(), traceparent)
    spans = wait_for(
        whole_trace(receiver[0], trace_id),
        timeout_s=SPANS_TIMEOUT_S,
        what=f"the spans of trace {trace_id}",
        watch=stack.procs,
    )
    check_connected(spans, caller_span)
    (batch,) = [s for s in spans if s.name == "worker batch"]
    broker = next(s for s in spans if s.name == "broker")
    assert batch.links == ((trace_id, broker.span_id),)
    assert batch.attributes["batch.requests"] == 1


def test_batch_spans_link_every_call_they_served(
    stack: Stack, receiver: tuple[Receiver, int]
) -> None:
    """Concurrent calls to a batching model: each batch span links to the broker span of every
    call in its batch, and every call's worker spans name a batch that links back to it."""
    client = stack.client()
    contexts = [new_traceparent() for _ in range(12)]
    rng = np.random.default_rng(1)
    with futures.ThreadPoolExecutor(max_workers=len(contexts)) as pool:
        calls = [
            pool.submit(
                client.infer,
                "mlp_wait",
                [_mlp_input(rand_fp32(rng, 1))],
                headers={"traceparent": tp},
            )
            for tp, _, _ in contexts
        ]
        for call in calls:
            call.result(timeout=30)
    traces = {
        trace_id: wait_for(
            whole_trace(receiver[0], trace_id, with_batch=False),
            timeout_s=SPANS_TIMEOUT_S,
            what=f"the spans of trace {trace_id}",
            watch=stack.procs,
        )
        for _, trace_id, _ in contexts
    }
    broker_span = {t: next(s for s in spans if s.name == "broker") for t, spans in traces.items()}
    served = {(t, b.span_id) for t, b in broker_span.items()}
    batches = [s for s in receiver[0].spans() if s.name == "worker batch" and s.links]
    ours = [b for b in batches if set(b.links) & served]
    assert ours
    for batch in ours:
        assert set(batch.links) <= served
        assert len(batch.links) == batch.attributes["batch.requests"]
        assert batch.parent in {broker_span[batch.trace_id].span_id}
    linked = {link for batch in ours for link in batch.links}
    assert linked == served  # each call is linked from exactly the batch that served it
    assert sum(len(b.links) for b in ours) == len(contexts)


def _mlp_input(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_a_sampled_out_call_makes_no_span_anywhere(
    stack: Stack, receiver: tuple[Receiver, int]
) -> None:
    client = stack.client()
    unsampled, unsampled_id, _ = new_traceparent(sampled=False)
    call_simple(client, unsampled)
    # A traced call after it: once its spans are in from all three tiers, so would the first
    # call's be (each tier exports in the order spans end).
    traced, traced_id, _ = new_traceparent()
    call_simple(client, traced)
    wait_for(
        whole_trace(receiver[0], traced_id),
        timeout_s=SPANS_TIMEOUT_S,
        what="the traced call's spans",
        watch=stack.procs,
    )
    time.sleep(3 * BSP_DELAY_MS / 1000)
    assert receiver[0].spans(unsampled_id) == []


def test_trace_setting_turns_tracing_off_and_on(
    stack: Stack, receiver: tuple[Receiver, int]
) -> None:
    client = stack.client()
    initial = client.get_trace_settings(as_json=True)
    assert initial["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    assert initial["settings"]["trace_rate"]["value"] == ["1"]
    try:
        off = client.update_trace_settings(
            model_name="simple", settings={"trace_level": ["OFF"]}, as_json=True
        )
        assert off["settings"]["trace_level"]["value"] == ["OFF"]
        quiet, quiet_id, _ = new_traceparent()
        call_simple(client, quiet)
        client.update_trace_settings(
            model_name="simple", settings={"trace_level": None}, as_json=True
        )
        loud, loud_id, caller = new_traceparent()
        call_simple(client, loud)
        spans = wait_for(
            whole_trace(receiver[0], loud_id),
            timeout_s=SPANS_TIMEOUT_S,
            what="spans after tracing was turned back on",
            watch=stack.procs,
        )
        check_connected(spans, caller)
        time.sleep(3 * BSP_DELAY_MS / 1000)
        assert receiver[0].spans(quiet_id) == []
        with pytest.raises(InferenceServerException, match="trace_file is not supported"):
            client.update_trace_settings(settings={"trace_file": "/tmp/trace.json"})
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            client.get_trace_settings(model_name="nope")
    finally:
        client.update_trace_settings(model_name="simple", settings={"trace_level": None})


def _export_errors(stack: Stack) -> list[str]:
    return [
        f"{proc.name}: {line}"
        for proc in stack.procs
        for line in proc.log_path.read_text(errors="replace").splitlines()
        if any(marker in line for marker in EXPORT_ERRORS)
    ]


def test_a_broker_restart_mid_trace_leaves_no_export_errors(
    receiver: tuple[Receiver, int],
    model_repo: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    stack = traced_stack(tmp_path, model_repo, receiver[1], "restart")
    request.node.stash.setdefault(STACKS_KEY, []).append(stack)
    client = stack.client()
    stop = threading.Event()
    statuses: list[str] = []
    trace_ids: set[str] = set()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            traceparent, trace_id, _ = new_traceparent()
            trace_ids.add(trace_id)
            try:
                call_simple(client, traceparent, seed=n)
                statuses.append("OK")
            except InferenceServerException as exc:
                statuses.append(str(exc.status()))
                time.sleep(0.05)

    thread = threading.Thread(target=load, name="traced-load")
    try:
        thread.start()
        wait_for(lambda: len(statuses) > 20, timeout_s=30, what="calls flowing")
        old = stack.procs[0]
        assert old.name == "broker"
        stack.kill(old, signal.SIGTERM)
        assert old.popen.returncode == 0
        with otel_env(receiver[1]):
            new = stack.start_broker()
        before = len(statuses)
        wait_for(
            lambda: statuses[before:].count("OK") > 20,
            timeout_s=30,
            what="calls succeeding after the restart",
            watch=[new],
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    traceparent, trace_id, caller = new_traceparent()
    call_simple(client, traceparent)
    spans = wait_for(
        whole_trace(receiver[0], trace_id),
        timeout_s=SPANS_TIMEOUT_S,
        what="a whole trace after the restart",
        watch=[p for p in stack.procs if p is not old],
    )
    check_connected(spans, caller)
    ours = [s for s in receiver[0].spans() if s.trace_id in trace_ids]
    brokers = {s.instance for s in ours if s.service == "broker"}
    assert len(brokers) == 2, "the first broker's last spans were lost at its shutdown"
    assert stack.kill(new, signal.SIGTERM) == 0  # Stack.stop would SIGKILL a second broker
    stack.stop()
    assert _export_errors(stack) == []
