"""Large tensors are not copied between the bytes a request arrived in and the model, and a
response copies each output once: checked with ``np.shares_memory``, not assumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabric.errors import INVALID_ARGUMENT, RequestError
from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_request, make_spec
from worker import demo_large
from worker.codec import decode_request, encode_response
from worker.loaders import LoadedModel, load_model
from worker.raw_wire import IN_PLACE_MIN_BYTES, RawParts, split_raw_inputs
from worker.repository import scan_model

ROWS = IN_PLACE_MIN_BYTES // 4  # one FP32 row of exactly the in-place threshold


def arrived(request: pb.ModelInferRequest) -> tuple[bytearray, memoryview]:
    """The request as the fabric hands a large one over: a writable view of a buffer."""
    buffer = bytearray(request.SerializeToString())
    return buffer, memoryview(buffer)


def buffer_array(buffer: bytearray) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.uint8)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root: Path = tmp_path_factory.mktemp("models")
    demo_large.build(root)
    return load_model(scan_model(root / "identity_fp32"), 1, "cpu")


def test_large_raw_inputs_are_views_of_the_request_buffer() -> None:
    spec = make_spec([("A", "FP32", [-1]), ("B", "INT64", [3])], [("Y", "FP32", [-1])], 8)
    a = np.random.default_rng(0).standard_normal((2, ROWS)).astype(np.float32)
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    buffer, view = arrived(make_request([("A", "FP32", a), ("B", "INT64", b)], outputs=["Y"]))
    decoded = decode_request(view, spec)
    for name, want in (("A", a), ("B", b)):
        got = decoded.inputs[name]
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, buffer_array(buffer)), f"{name} was copied"
        assert got.flags.writeable  # so torch can share it too
    assert decoded.requested_outputs == ("Y",) and decoded.id == "req-1"


def test_small_requests_take_protobufs_own_path() -> None:
    spec = make_spec([("A", "FP32", [4])], [("Y", "FP32", [4])], 8)
    a = np.ones((1, 4), np.float32)
    buffer, view = arrived(make_request([("A", "FP32", a)]))
    got = decode_request(view, spec).inputs["A"]
    np.testing.assert_array_equal(got, a)
    assert not np.shares_memory(got, buffer_array(buffer))


def test_large_requests_are_checked_like_small_ones() -> None:
    spec = make_spec([("A", "FP32", [-1])], [("Y", "FP32", [-1])], 8)
    request = make_request([("A", "FP32", np.zeros((1, ROWS), np.float32))])
    request.inputs[0].contents.fp32_contents.append(1.0)  # typed and raw at once
    with pytest.raises(RequestError) as info:
        decode_request(arrived(request)[1], spec)
    assert (
        info.value.code == INVALID_ARGUMENT
        and "must not be specified when using raw_input_contents" in info.value.message
    )
    short = make_request([("A", "FP32", np.zeros((1, ROWS), np.float32))])
    short.inputs[0].shape[1] = ROWS + 1
    with pytest.raises(RequestError, match="input byte size mismatch"):
        decode_request(arrived(short)[1], spec)
    data = bytearray(short.SerializeToString())
    with pytest.raises(RequestError, match="truncated"):
        split_raw_inputs(memoryview(data)[:-1])


def test_identity_model_output_is_the_request_buffer_itself(identity: LoadedModel) -> None:
    """Frame → np.frombuffer → torch.from_numpy → model → numpy: no copy at all."""
    x = np.random.default_rng(1).standard_normal((1, 4 * ROWS)).astype(np.float32)
    buffer, view = arrived(make_request([("INPUT0", "FP32", x)]))
    decoded = decode_request(view, identity.spec)
    outputs = identity.execute(decoded.inputs)
    assert np.shares_memory(outputs["OUTPUT0"], buffer_array(buffer))
    body = encode_response(decoded, "identity_fp32", "1", outputs)
    response = pb.ModelInferResponse.FromString(body)
    assert response.outputs[0].shape == [1, 4 * ROWS] and response.id == "req-1"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), x[0])


def test_joined_response_parses_as_protobufs_own() -> None:
    outputs = [
        np.arange(ROWS, dtype=np.float32),
        np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
    ]
    head = pb.ModelInferResponse(model_name="m", model_version="1", id="x")
    head.outputs.add(name="A", datatype="FP32", shape=[ROWS])
    head.outputs.add(name="B", datatype="INT32", shape=[3, 2])
    want = pb.ModelInferResponse()
    want.CopyFrom(head)
    want.raw_output_contents.extend(o.tobytes() for o in outputs)
    joined = RawParts(head.SerializeToString(), outputs).join()  # B is not contiguous
    assert pb.ModelInferResponse.FromString(joined) == want


def test_an_oversized_reply_becomes_resource_exhausted_naming_the_limit() -> None:
    from worker.raw_wire import reply_too_large

    status, message, body = reply_too_large(2_000_000, 1_048_576)
    assert status == "RESOURCE_EXHAUSTED" and body is None
    assert "2000000 bytes exceeds the message size limit of 1048576 bytes" in message
