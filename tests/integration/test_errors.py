"""Errors reach the client with the right gRPC status, and the system keeps serving after each."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.helpers import (
    SIMPLE_DIM,
    assert_int_outputs,
    check_simple,
    expect_error,
    mlp_input,
    rand_int32,
    raw_call_error,
    raw_simple_request,
    raw_stub,
    raw_tensor,
    simple_expected,
    simple_inputs,
)
from tests.integration.stack import SMALL_MAX_MESSAGE_BYTES, Stack, wait_for

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def client(stack: Stack) -> grpcclient.InferenceServerClient:
    return stack.client()


@pytest.fixture
def stub(stack: Stack) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel, stub = raw_stub(stack.frontend.url)
    yield stub
    channel.close()


def ab(seed: int, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rand_int32(rng, batch), rand_int32(rng, batch)


# -- NOT_FOUND ---------------------------------------------------------------------------


def test_unknown_model_not_found(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(1)
    exc = expect_error("NOT_FOUND", client.infer, "no_such_model", simple_inputs(a, b))
    assert "no_such_model" in exc.message()
    check_simple(client)


def test_unknown_version_not_found(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(2)
    exc = expect_error("NOT_FOUND", client.infer, "simple", simple_inputs(a, b), model_version="7")
    assert "simple" in exc.message()
    check_simple(client)


def test_metadata_of_unknown_model_not_found(client: grpcclient.InferenceServerClient) -> None:
    expect_error("NOT_FOUND", client.get_model_metadata, "no_such_model")
    expect_error("NOT_FOUND", client.get_model_config, "no_such_model")
    check_simple(client)


# -- INVALID_ARGUMENT ------------------------------------------------------------------------


def test_wrong_datatype(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(3)
    in0 = grpcclient.InferInput("INPUT0", [1, SIMPLE_DIM], "FP32")
    in0.set_data_from_numpy(a.astype(np.float32))
    in1 = simple_inputs(a, b)[1]
    exc = expect_error("INVALID_ARGUMENT", client.infer, "simple", [in0, in1])
    assert "INPUT0" in exc.message()
    check_simple(client)


@pytest.mark.parametrize(
    ("shape", "text"),
    [
        ([1, SIMPLE_DIM - 1], "unexpected shape for input 'INPUT0'"),
        ([1, SIMPLE_DIM + 1], "unexpected shape for input 'INPUT0'"),
        ([SIMPLE_DIM], "inference request batch-size must be <= 8"),  # dim 0 is the batch
    ],
)
def test_wrong_shape(client: grpcclient.InferenceServerClient, shape: list[int], text: str) -> None:
    a, b = ab(4)
    bad = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    in0 = grpcclient.InferInput("INPUT0", shape, "INT32")
    in0.set_data_from_numpy(bad)
    exc = expect_error("INVALID_ARGUMENT", client.infer, "simple", [in0, simple_inputs(a, b)[1]])
    assert text in exc.message()  # Triton's texts
    check_simple(client)


def test_batch_larger_than_max_batch_size(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(5, batch=9)  # simple has max_batch_size 8
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(a, b))
    check_simple(client)


def test_mismatched_batch_sizes(client: grpcclient.InferenceServerClient) -> None:
    a, _ = ab(6, batch=2)
    _, b = ab(6, batch=3)
    expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(a, b))
    check_simple(client)


def test_missing_input(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(7)
    exc = expect_error("INVALID_ARGUMENT", client.infer, "simple", simple_inputs(a, b)[:1])
    assert "INPUT1" in exc.message()
    check_simple(client)


def test_extra_input(client: grpcclient.InferenceServerClient) -> None:
    a, b = ab(8)
    extra = grpcclient.InferInput("INPUT2", [1, SIMPLE_DIM], "INT32")
    extra.set_data_from_numpy(a)
    exc = expect_error("INVALID_ARGUMENT", client.infer, "simple", [*simple_inputs(a, b), extra])
    assert "INPUT2" in exc.message()
    check_simple(client)


def test_duplicate_input(stub: service_pb2_grpc.GRPCInferenceServiceStub, stack: Stack) -> None:
    a, b = ab(9)
    request = raw_simple_request(a, b)
    request.inputs.append(raw_tensor("INPUT0", "INT32", [1, SIMPLE_DIM]))
    request.raw_input_contents.append(a.tobytes())
    details = raw_call_error(stub, request, INVALID)
    assert "INPUT0" in details
    check_simple(stack.client())


@pytest.mark.parametrize("delta", [-4, +4, -1])
def test_raw_byte_size_mismatch(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, stack: Stack, delta: int
) -> None:
    a, b = ab(10)
    request = raw_simple_request(a, b)
    raw = a.tobytes()
    request.raw_input_contents[0] = raw[:delta] if delta < 0 else raw + b"\0" * delta
    details = raw_call_error(stub, request, INVALID)
    assert "INPUT0" in details, details
    check_simple(stack.client())


def test_raw_contents_count_mismatch(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, stack: Stack
) -> None:
    a, b = ab(11)
    request = raw_simple_request(a, b)
    del request.raw_input_contents[1]
    raw_call_error(stub, request, INVALID)
    check_simple(stack.client())


def test_typed_contents_count_mismatch(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, stack: Stack
) -> None:
    a, b = ab(12)
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", a[:, :-1]), ("INPUT1", b)):
        tensor = raw_tensor(name, "INT32", [1, SIMPLE_DIM])
        tensor.contents.int_contents.extend(values.reshape(-1).tolist())
        request.inputs.append(tensor)
    details = raw_call_error(stub, request, INVALID)
    assert "INPUT0" in details, details
    check_simple(stack.client())


def test_bytes_tensor_malformed(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, stack: Stack
) -> None:
    """A BYTES element whose length prefix runs past the end of the buffer."""
    request = service_pb2.ModelInferRequest(model_name="simple_string")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.append(raw_tensor(name, "BYTES", [1, SIMPLE_DIM]))
    good = b"".join(len(b"7").to_bytes(4, "little") + b"7" for _ in range(SIMPLE_DIM))
    request.raw_input_contents.append(good[:-1] + (100).to_bytes(4, "little"))
    request.raw_input_contents.append(good)
    details = raw_call_error(stub, request, INVALID)
    assert "INPUT0" in details, details
    check_simple(stack.client())


# -- INTERNAL from the model ------------------------------------------------------------------


def faulty_inputs(values: list[int]) -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    x.set_data_from_numpy(np.array([values], dtype=np.int32))
    return [x]


def test_model_exception_is_internal_and_worker_survives(
    client: grpcclient.InferenceServerClient, stack: Stack
) -> None:
    worker_pid = stack.workers[0].pid
    for attempt in range(3):
        exc = expect_error("INTERNAL", client.infer, "faulty", faulty_inputs([1, 2, -7, 4]))
        assert "faulty model refuses negative input -7" in exc.message(), (attempt, exc)
        result = client.infer("faulty", faulty_inputs([1, 2, 3, 4]))
        out = result.as_numpy("OUTPUT0")
        assert out is not None and out.tolist() == [[2, 4, 6, 8]]
    check_simple(client)
    stack.assert_alive()
    assert stack.workers[0].pid == worker_pid


# -- RESOURCE_EXHAUSTED ----------------------------------------------------------------------


def test_message_larger_than_max_message_bytes(stack: Stack) -> None:
    small = stack.client(stack.frontends[1])
    x = np.zeros((64, 256), dtype=np.float32)  # 64 KiB of tensor data alone
    assert x.nbytes >= SMALL_MAX_MESSAGE_BYTES
    exc = expect_error("RESOURCE_EXHAUSTED", small.infer, "mlp", mlp_input(x))
    assert exc.message()
    check_simple(small)
    # The same request through a frontend with the default limit is fine.
    result = stack.client().infer("mlp", mlp_input(x))
    assert result.as_numpy("OUTPUT0").shape == (64, 256)


# -- UNAVAILABLE: no worker for the model ------------------------------------------------------


@pytest.mark.timeout(180)
def test_no_worker_is_unavailable(make_stack: Callable[[], Stack]) -> None:
    """With no worker connected (never, or after the only one died) the answer is UNAVAILABLE,
    not NOT_FOUND or a hang; once a worker is back, requests succeed again."""
    stack = make_stack()
    stack.start_broker()
    stack.start_frontend()
    stack.wait_live()
    client = stack.client()
    a, b = ab(13)

    started = time.monotonic()
    expect_error("UNAVAILABLE", client.infer, "simple", simple_inputs(a, b), client_timeout=20)
    assert time.monotonic() - started < 15, "UNAVAILABLE should not wait for the deadline"

    worker = stack.start_worker()
    stack.wait_ready(["simple"])
    assert_int_outputs(client.infer("simple", simple_inputs(a, b)), simple_expected(a, b))

    stack.kill(worker)
    wait_for(
        lambda: not client.is_model_ready("simple", client_timeout=1.0),
        timeout_s=5.0,
        what="ModelReady(simple) false after the worker was killed",
        watch=[stack.broker, stack.frontend],
    )
    started = time.monotonic()
    expect_error("UNAVAILABLE", client.infer, "simple", simple_inputs(a, b), client_timeout=20)
    assert time.monotonic() - started < 15, "UNAVAILABLE should not wait for the deadline"
    assert stack.broker.alive() and stack.frontend.alive()


@pytest.mark.timeout(180)
def test_model_whose_worker_died_is_unavailable_while_others_serve(
    make_stack: Callable[[], Stack], demo_repo: Path, tmp_path: Path
) -> None:
    """Worker A serves only ``simple``; worker B serves everything. When B dies, ``mlp`` has no
    worker: that is UNAVAILABLE (retryable), not NOT_FOUND, and ``simple`` keeps working."""
    only_simple = tmp_path / "only_simple"
    only_simple.mkdir()
    shutil.copytree(demo_repo / "simple", only_simple / "simple")
    stack = make_stack()
    stack.start_broker()
    stack.start_worker(only_simple)
    full = stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["simple", "mlp"])
    client = stack.client()
    x = np.zeros((1, 256), dtype=np.float32)
    client.infer("mlp", mlp_input(x))

    stack.kill(full)
    # Both in one look: a frontend that missed the broker's heartbeats for a moment (two busy
    # cores) calls every model unready, which is not what this waits for.
    wait_for(
        lambda: (
            not client.is_model_ready("mlp", client_timeout=1.0)
            and client.is_model_ready("simple", client_timeout=1.0)
        ),
        timeout_s=5.0,
        what="ModelReady(mlp) false and ModelReady(simple) true after mlp's only worker died",
        watch=[stack.broker, stack.frontend],
    )
    wait_for(
        lambda: client.is_server_ready(client_timeout=1.0),
        timeout_s=5.0,
        what="ServerReady true: a worker is still up and serving simple",
        watch=[stack.broker, stack.frontend],
    )
    started = time.monotonic()
    expect_error("UNAVAILABLE", client.infer, "mlp", mlp_input(x), client_timeout=20)
    assert time.monotonic() - started < 15, "UNAVAILABLE should not wait for the deadline"
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index.get("simple") == "READY", index
    assert index.get("mlp", "UNAVAILABLE") != "READY", index
    check_simple(client)
