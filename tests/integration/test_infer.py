"""ModelInfer through the sync tritonclient, and raw protobuf requests with typed contents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.helpers import (
    INT_LIMIT,
    MLP_ATOL,
    MLP_DIM,
    MLP_RTOL,
    SIMPLE_DIM,
    assert_bytes_outputs,
    assert_int_outputs,
    assert_mlp_output,
    check_simple,
    expect_error,
    mlp_expected,
    mlp_input,
    output_names,
    rand_fp32,
    rand_int32,
    raw_simple_request,
    raw_stub,
    raw_tensor,
    response_outputs,
    simple_expected,
    simple_inputs,
    string_expected,
    string_inputs,
    to_bytes_tensor,
)
from tests.integration.stack import Stack

Stub = service_pb2_grpc.GRPCInferenceServiceStub


@pytest.fixture
def client(stack: Stack) -> grpcclient.InferenceServerClient:
    return stack.client()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_simple_all_outputs(client: grpcclient.InferenceServerClient, batch: int) -> None:
    rng = np.random.default_rng(batch)
    a, b = rand_int32(rng, batch), rand_int32(rng, batch)
    result = client.infer("simple", simple_inputs(a, b), request_id=f"simple-{batch}")
    response = result.get_response()
    assert response.model_name == "simple"
    assert response.model_version == "1"
    assert response.id == f"simple-{batch}"
    assert sorted(output_names(result)) == ["OUTPUT0", "OUTPUT1"]
    for out in response.outputs:
        assert out.datatype == "INT32"
        assert list(out.shape) == [batch, SIMPLE_DIM]
    assert_int_outputs(result, simple_expected(a, b))


def test_simple_explicit_version(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(11)
    a, b = rand_int32(rng, 2), rand_int32(rng, 2)
    result = client.infer("simple", simple_inputs(a, b), model_version="1")
    assert result.get_response().model_version == "1"
    assert_int_outputs(result, simple_expected(a, b))


@pytest.mark.parametrize("wanted", ["OUTPUT0", "OUTPUT1"])
def test_simple_requested_output_subset(
    client: grpcclient.InferenceServerClient, wanted: str
) -> None:
    rng = np.random.default_rng(5)
    a, b = rand_int32(rng, 2), rand_int32(rng, 2)
    result = client.infer(
        "simple", simple_inputs(a, b), outputs=[grpcclient.InferRequestedOutput(wanted)]
    )
    assert output_names(result) == [wanted], "only the requested output may be returned"
    assert_int_outputs(result, {wanted: simple_expected(a, b)[wanted]})


def test_simple_unknown_requested_output_rejected(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(6)
    a, b = rand_int32(rng, 1), rand_int32(rng, 1)
    exc = expect_error(
        "INVALID_ARGUMENT",
        client.infer,
        "simple",
        simple_inputs(a, b),
        outputs=[grpcclient.InferRequestedOutput("OUTPUT7")],
    )
    assert "OUTPUT7" in exc.message()
    check_simple(client)


@pytest.mark.parametrize("batch", [1, 4])
def test_simple_string(client: grpcclient.InferenceServerClient, batch: int) -> None:
    rng = np.random.default_rng(100 + batch)
    a = rng.integers(-(10**6), 10**6, size=(batch, SIMPLE_DIM), dtype=np.int32)
    b = rng.integers(-(10**6), 10**6, size=(batch, SIMPLE_DIM), dtype=np.int32)
    result = client.infer("simple_string", string_inputs(a, b))
    response = result.get_response()
    assert response.model_name == "simple_string"
    for out in response.outputs:
        assert out.datatype == "BYTES"
        assert list(out.shape) == [batch, SIMPLE_DIM]
    assert_bytes_outputs(result, string_expected(a, b))


def test_simple_string_requested_output_subset(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(-1000, 1000, size=(2, SIMPLE_DIM), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(2, SIMPLE_DIM), dtype=np.int32)
    result = client.infer(
        "simple_string", string_inputs(a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")]
    )
    assert output_names(result) == ["OUTPUT1"]
    assert_bytes_outputs(result, {"OUTPUT1": string_expected(a, b)["OUTPUT1"]})


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_mlp(client: grpcclient.InferenceServerClient, model_repo: Path, batch: int) -> None:
    rng = np.random.default_rng(200 + batch)
    x = rand_fp32(rng, batch)
    result = client.infer("mlp", mlp_input(x))
    response = result.get_response()
    assert response.model_name == "mlp"
    assert output_names(result) == ["OUTPUT0"]
    assert response.outputs[0].datatype == "FP32"
    assert list(response.outputs[0].shape) == [batch, MLP_DIM]
    assert_mlp_output(result, mlp_expected(model_repo, x))


# -- typed `contents` instead of raw_input_contents ----------------------------------------


@pytest.fixture
def stub(stack: Stack) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel, stub = raw_stub(stack.frontend.url)
    yield stub
    channel.close()


@pytest.mark.parametrize("batch", [1, 2])
def test_typed_int_contents(stub: Stub, batch: int) -> None:
    rng = np.random.default_rng(300 + batch)
    a, b = rand_int32(rng, batch), rand_int32(rng, batch)
    request = service_pb2.ModelInferRequest(model_name="simple", id=f"typed-{batch}")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = raw_tensor(name, "INT32", [batch, SIMPLE_DIM])
        tensor.contents.int_contents.extend(values.reshape(-1).tolist())
        request.inputs.append(tensor)
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == f"typed-{batch}"
    assert response.model_name == "simple"
    outputs = response_outputs(response)
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"]
    for name, want in simple_expected(a, b).items():
        assert outputs[name].shape == want.shape
        np.testing.assert_array_equal(outputs[name], want, err_msg=name)


def test_typed_bytes_contents(stub: Stub) -> None:
    rng = np.random.default_rng(301)
    a = rng.integers(-(10**6), 10**6, size=(2, SIMPLE_DIM), dtype=np.int32)
    b = rng.integers(-(10**6), 10**6, size=(2, SIMPLE_DIM), dtype=np.int32)
    request = service_pb2.ModelInferRequest(model_name="simple_string")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = raw_tensor(name, "BYTES", [2, SIMPLE_DIM])
        tensor.contents.bytes_contents.extend(to_bytes_tensor(values).reshape(-1).tolist())
        request.inputs.append(tensor)
    outputs = response_outputs(stub.ModelInfer(request, timeout=30))
    for name, want in string_expected(a, b).items():
        assert outputs[name].reshape(-1).tolist() == want.reshape(-1).tolist(), name


def test_typed_fp32_contents(stub: Stub, model_repo: Path) -> None:
    rng = np.random.default_rng(302)
    x = rand_fp32(rng, 3)
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = raw_tensor("INPUT0", "FP32", [3, MLP_DIM])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.inputs.append(tensor)
    request.outputs.append(service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT0"))
    outputs = response_outputs(stub.ModelInfer(request, timeout=30))
    assert list(outputs) == ["OUTPUT0"]
    np.testing.assert_allclose(
        outputs["OUTPUT0"], mlp_expected(model_repo, x), rtol=MLP_RTOL, atol=MLP_ATOL
    )


def test_raw_request_without_typed_contents(stub: Stub) -> None:
    """The raw stub path gives the same answer as tritonclient (a sanity check of the decoder)."""
    rng = np.random.default_rng(303)
    a, b = rand_int32(rng, 4), rand_int32(rng, 4)
    outputs = response_outputs(stub.ModelInfer(raw_simple_request(a, b), timeout=30))
    for name, want in simple_expected(a, b).items():
        np.testing.assert_array_equal(outputs[name], want, err_msg=name)


def test_raw_stub_status_code_on_success(stub: Stub) -> None:
    rng = np.random.default_rng(304)
    a, b = rand_int32(rng, 1), rand_int32(rng, 1)
    _, call = stub.ModelInfer.with_call(raw_simple_request(a, b), timeout=30)
    assert call.code() == grpc.StatusCode.OK


# -- property: any batch size and values ---------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.integers(min_value=1, max_value=8).flatmap(
        lambda batch: st.tuples(
            hnp.arrays(
                np.int32,
                (batch, SIMPLE_DIM),
                elements=st.integers(-INT_LIMIT, INT_LIMIT - 1),
            ),
            hnp.arrays(
                np.int32,
                (batch, SIMPLE_DIM),
                elements=st.integers(-INT_LIMIT, INT_LIMIT - 1),
            ),
        )
    )
)
def test_simple_property(
    client: grpcclient.InferenceServerClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    a, b = data
    result = client.infer("simple", simple_inputs(a, b), client_timeout=30)
    assert_int_outputs(result, simple_expected(a, b))


def echo_input(x: np.ndarray) -> list[grpcclient.InferInput]:
    in0 = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    in0.set_data_from_numpy(x)
    return [in0]


@pytest.mark.parametrize("length", [1, 1000, 4 * 1024 * 1024])
def test_echo_variable_length_and_large_payload(
    client: grpcclient.InferenceServerClient, length: int
) -> None:
    """A model without batching and a variable dim; the largest case is 16 MiB each way, well
    under the default 64 MiB message limit."""
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    result = client.infer("echo", echo_input(x), client_timeout=60)
    out = result.as_numpy("OUTPUT0")
    assert out is not None and out.shape == (length,)
    np.testing.assert_array_equal(out, -x)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(client: grpcclient.InferenceServerClient, algorithm: str) -> None:
    rng = np.random.default_rng(400)
    a, b = rand_int32(rng, 4), rand_int32(rng, 4)
    result = client.infer("simple", simple_inputs(a, b), compression_algorithm=algorithm)
    assert_int_outputs(result, simple_expected(a, b))
