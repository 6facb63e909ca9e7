"""Triton's error texts and codes, as stock clients see them: tritonclient sync, async_infer, aio
and streaming, and raw stubs (tritonclient's copy of the generated protos)."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.stack import Stack

UNKNOWN_MODEL = "Request for unknown model: 'no_such_model' is not found"


def simple_inputs(batch: int = 1, dims: int = 16) -> list[grpcclient.InferInput]:
    a = np.arange(batch * dims, dtype=np.int32).reshape(batch, dims)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [batch, dims], "INT32")
        tensor.set_data_from_numpy(a)
        inputs.append(tensor)
    return inputs


def failure(fn: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


# ---- unknown model, version, version string: every client flavour ---------------------------


@pytest.mark.parametrize(
    ("model", "version", "status", "message"),
    [
        ("no_such_model", "", "NOT_FOUND", UNKNOWN_MODEL),
        ("simple", "7", "NOT_FOUND", "Request for unknown model: 'simple' version 7 is not found"),
        (
            "simple",
            "abc",
            "INVALID_ARGUMENT",
            "failed to get model version from specified version string 'abc' (details: stol), "
            "version should be an integral value > 0",
        ),
        (
            "simple",
            "-1",
            "INVALID_ARGUMENT",
            "invalid model version specified '-1' , version should be an integral value > 0",
        ),
    ],
)
def test_lookup_errors_sync(
    triton_stack: Stack, model: str, version: str, status: str, message: str
) -> None:
    client = triton_stack.client()
    exc = failure(client.infer, model, simple_inputs(), model_version=version)
    assert (exc.status(), exc.message()) == (f"StatusCode.{status}", message)


def test_unknown_model_async_infer(triton_stack: Stack) -> None:
    client = triton_stack.client()
    done: queue.Queue[InferenceServerException | None] = queue.Queue()
    client.async_infer("no_such_model", simple_inputs(), lambda result, error: done.put(error))
    error = done.get(timeout=30)
    assert error is not None
    assert (error.status(), error.message()) == ("StatusCode.NOT_FOUND", UNKNOWN_MODEL)


def test_unknown_model_aio(triton_stack: Stack) -> None:
    async def run() -> InferenceServerException:
        async with aioclient.InferenceServerClient(triton_stack.frontend.url) as client:
            inputs = []
            for name in ("INPUT0", "INPUT1"):
                tensor = aioclient.InferInput(name, [1, 16], "INT32")
                tensor.set_data_from_numpy(np.zeros((1, 16), np.int32))
                inputs.append(tensor)
            with pytest.raises(InferenceServerException) as info:
                await client.infer("no_such_model", inputs)
            metadata = await client.get_server_metadata()
            assert metadata.name == "triton"
            return info.value

    exc = asyncio.run(run())
    assert (exc.status(), exc.message()) == ("StatusCode.NOT_FOUND", UNKNOWN_MODEL)


def test_unknown_model_on_a_stream_fails_that_request_only(triton_stack: Stack) -> None:
    client = grpcclient.InferenceServerClient(triton_stack.frontend.url)
    got: queue.Queue[tuple[object, InferenceServerException | None]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer("no_such_model", simple_inputs(), request_id="bad")
        client.async_stream_infer("simple", simple_inputs(), request_id="good")
        answers = [got.get(timeout=30) for _ in range(2)]
    finally:
        client.stop_stream()
        client.close()
    errors = [e for _, e in answers if e is not None]
    assert [e.message() for e in errors] == [UNKNOWN_MODEL]
    results = [r for r, e in answers if e is None]
    assert results[0].get_response().id == "good"  # type: ignore[attr-defined]


def test_server_metadata_says_triton(triton_stack: Stack) -> None:
    metadata = triton_stack.client().get_server_metadata()
    assert metadata.name == "triton"
    assert metadata.version.startswith("fabricserve ")
    assert "classification" in metadata.extensions
    assert any(e.startswith("fabricserve-") for e in metadata.extensions)


def test_metadata_of_unknown_model(triton_stack: Stack) -> None:
    exc = failure(triton_stack.client().get_model_metadata, "no_such_model")
    assert (exc.status(), exc.message()) == ("StatusCode.NOT_FOUND", UNKNOWN_MODEL)


# ---- input problems ------------------------------------------------------------------------


def test_missing_input(triton_stack: Stack) -> None:
    exc = failure(triton_stack.client().infer, "simple", simple_inputs()[:1])
    assert exc.status() == "StatusCode.INVALID_ARGUMENT"
    assert exc.message() == (
        "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but "
        "missing required input(s) ['INPUT1']. Please provide all required input(s)."
    )


def test_unexpected_input(triton_stack: Stack) -> None:
    inputs = simple_inputs()
    renamed = grpcclient.InferInput("INPUT9", [1, 16], "INT32")
    renamed.set_data_from_numpy(np.zeros((1, 16), np.int32))
    exc = failure(triton_stack.client().infer, "simple", [inputs[0], renamed])
    assert exc.message() == "unexpected inference input 'INPUT9' for model 'simple'"


def test_wrong_shape_and_batch(triton_stack: Stack) -> None:
    client = triton_stack.client()
    inputs = simple_inputs()
    for tensor in inputs:
        tensor.set_shape([2, 8])
    exc = failure(client.infer, "simple", inputs)
    assert exc.message() == (
        "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [2,8]"
    )
    exc = failure(client.infer, "simple", simple_inputs(batch=9), request_id="r9")
    assert (
        exc.message() == "[request id: r9] inference request batch-size must be <= 8 for 'simple'"
    )


def _raw(stack: Stack, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(stack.frontend.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
    return info.value


def _raw_simple() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.zeros(16, np.int32).tobytes())
    return request


def test_contents_and_raw_together_are_refused(triton_stack: Stack) -> None:
    request = _raw_simple()
    request.inputs[0].contents.int_contents.extend(range(16))
    err = _raw(triton_stack, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for "
        "model 'simple'"
    )


def test_byte_size_mismatch(triton_stack: Stack) -> None:
    request = _raw_simple()
    request.raw_input_contents[1] = b"\0" * 60
    err = _raw(triton_stack, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "input byte size mismatch for input 'INPUT1' for model 'simple'. Expected 64, got 60"
    )


def test_wrong_datatype(triton_stack: Stack) -> None:
    request = _raw_simple()
    request.inputs[0].datatype = "FP32"
    err = _raw(triton_stack, request)
    assert err.details() == (
        "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
    )
