"""Admission by bytes (``--max-in-flight-bytes``): the accounting itself, its refusal text, and
``InferenceService.infer`` refusing at once, counting the refusal and giving bytes back when a
call ends however it ends."""

from __future__ import annotations

import asyncio
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fabric import errors
from frontend.byte_admission import STREAM_WINDOW_BYTES, ByteBudget, grpc_receive_options
from frontend.config import FrontendConfig
from frontend.fabric_client import Reply
from frontend.inference_service import InferenceService
from frontend.metrics import FrontendCollector, RequestMetrics
from frontend.wire import RequestRoute
from protos import grpc_service_pb2 as pb
from tests.frontend.test_inference_attempts import NEVER, OK, ScriptedClient
from tests.frontend.test_traces import Context

ROUTE = RequestRoute("m", "", "")


def test_admits_up_to_the_limit_and_refuses_past_it() -> None:
    budget = ByteBudget(100)
    assert budget.admit(60)
    assert budget.admit(40)  # exactly the limit fits
    assert budget.held_bytes == 100
    assert not budget.admit(1)
    assert budget.held_bytes == 100  # a refusal counts nothing
    budget.release(60)
    assert budget.admit(50)
    assert budget.held_bytes == 90


def test_a_call_larger_than_the_limit_is_refused_even_when_nothing_is_held() -> None:
    budget = ByteBudget(100)
    assert not budget.admit(101)
    assert budget.held_bytes == 0
    assert budget.refusal(101) == (
        "request of 101 bytes is larger than the frontend's --max-in-flight-bytes (100 bytes)"
    )


def test_refusal_names_the_limit_and_the_sizes() -> None:
    budget = ByteBudget(1000)
    assert budget.admit(700)
    assert not budget.admit(400)
    assert budget.refusal(400) == (
        "frontend at byte capacity: request of 400 bytes with 700 bytes in flight would "
        "exceed --max-in-flight-bytes (1000 bytes)"
    )


def test_zero_means_no_bound_and_negative_is_refused() -> None:
    budget = ByteBudget(0)
    assert budget.admit(1 << 40)
    assert budget.held_bytes == 1 << 40
    with pytest.raises(ValueError, match="must be >= 0"):
        ByteBudget(-1)


def test_infer_refuses_past_the_byte_limit_and_serves_again_once_bytes_are_back() -> None:
    client = ScriptedClient([(0.05, OK), OK, OK])
    svc = InferenceService(
        FrontendConfig(max_in_flight_bytes=100),
        client,
        "test",  # type: ignore[arg-type]
    )

    async def scenario() -> tuple[Reply, Reply, Reply, int]:
        first = asyncio.create_task(svc.infer(ROUTE, b"a" * 80, None))
        await asyncio.sleep(0)  # admitted and waiting on its reply
        held = svc.bytes_in_flight.held_bytes
        refused = await svc.infer(ROUTE, b"b" * 30, None)
        return await first, refused, await svc.infer(ROUTE, b"c" * 30, None), held

    first, refused, later, held = asyncio.run(scenario())
    assert held == 80
    assert first == OK and later == OK
    assert refused.status == errors.RESOURCE_EXHAUSTED
    assert refused.message == (
        "frontend at byte capacity: request of 30 bytes with 80 bytes in flight would exceed "
        "--max-in-flight-bytes (100 bytes)"
    )
    assert len(client.submits) == 2  # the refused call never reached the fabric
    assert svc.counters["rejected_bytes"] == 1 and svc.counters["rejected"] == 0
    assert svc.bytes_in_flight.held_bytes == 0
    assert svc.metrics.models[("m", "1")].failures == {errors.RESOURCE_EXHAUSTED: 1}


def test_bytes_come_back_when_a_call_times_out() -> None:
    svc = InferenceService(
        FrontendConfig(max_in_flight_bytes=100),
        ScriptedClient([NEVER]),
        "test",  # type: ignore[arg-type]
    )
    reply = asyncio.run(svc.infer(ROUTE, b"a" * 90, 0.05))
    assert reply.status == errors.DEADLINE_EXCEEDED
    assert svc.bytes_in_flight.held_bytes == 0


def test_refusals_and_bytes_in_flight_are_exported() -> None:
    registry = CollectorRegistry()
    registry.register(
        FrontendCollector(
            RequestMetrics(), lambda: {"rejected_bytes": 2}, lambda: {"in_flight_bytes": 80.0}
        )
    )
    text = generate_latest(registry).decode()
    assert "fabric_frontend_rejected_bytes_total 2.0" in text
    assert "--max-in-flight-bytes reached" in text
    assert "fabric_frontend_in_flight_bytes 80.0" in text


def test_a_refused_call_does_not_keep_its_request_alive_through_the_abort() -> None:
    """grpc keeps the abort's exception (and so its traceback's frames) until the cyclic GC
    runs; the request must not be reachable from there."""
    svc = InferenceService(
        FrontendConfig(max_in_flight_bytes=100),
        ScriptedClient([]),
        "test",  # type: ignore[arg-type]
    )
    request = pb.ModelInferRequest(model_name="m", id="x" * 200).SerializeToString()
    alone = sys.getrefcount(request)
    context = Context(())
    with pytest.raises(RuntimeError) as info:
        asyncio.run(svc.ModelInfer(request, context))  # type: ignore[arg-type]
    assert context.aborted is not None and "--max-in-flight-bytes" in context.aborted[1]
    assert info.value.__traceback__ is not None  # the frames stay reachable from here
    assert sys.getrefcount(request) == alone


def test_receive_options_only_with_a_concurrent_rpc_limit() -> None:
    assert grpc_receive_options(0) == (None, [])
    limit, options = grpc_receive_options(8)
    assert limit == 8
    assert dict(options) == {
        "grpc.http2.bdp_probe": 0,
        "grpc.http2.lookahead_bytes": STREAM_WINDOW_BYTES,
    }
