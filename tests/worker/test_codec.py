"""Request decoding and validation, response encoding, BYTES framing and batch signatures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fabric.errors import INTERNAL, INVALID_ARGUMENT, RequestError
from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_request, make_spec
from worker.codec import (
    DecodedRequest,
    batch_signature,
    decode_bytes_tensor,
    decode_request,
    encode_bytes_tensor,
    encode_response,
)
from worker.model_config import DATATYPES

ALL_TYPES = sorted(DATATYPES)
TYPED_TYPES = [t for t in ALL_TYPES if t != "FP16"]


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values spanning each type's range (extremes included) for exact round trips."""
    rng = np.random.default_rng(seed)
    dtype = DATATYPES[datatype].numpy_dtype
    if datatype == "BYTES":
        items = [bytes(rng.integers(0, 256, size=i % 5, dtype=np.uint8)) for i in range(6)]
        flat = np.empty(int(np.prod(shape)), dtype=object)
        flat[:] = [items[i % len(items)] for i in range(flat.size)]
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        array.flat[0] = info.max
        array.flat[-1] = info.min
        return array
    array = rng.standard_normal(size=shape).astype(dtype)
    array.flat[0] = np.finfo(dtype).max
    return array


def one_tensor_spec(datatype: str, dims: tuple[int, ...] = (2, 3), max_batch_size: int = 4):
    return make_spec([("IN", datatype, dims)], [("OUT", datatype, dims)], max_batch_size)


def parse_response(data: bytes) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(data)


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_raw_round_trip_every_datatype(datatype: str) -> None:
    spec = one_tensor_spec(datatype)
    array = sample(datatype, (3, 2, 3))
    request = make_request([("IN", datatype, array)], request_id="abc")
    decoded = decode_request(request.SerializeToString(), spec)
    assert decoded.id == "abc"
    assert decoded.batch_size == 3
    assert decoded.inputs["IN"].dtype == DATATYPES[datatype].numpy_dtype
    assert decoded.inputs["IN"].shape == (3, 2, 3)
    assert decoded.inputs["IN"].tolist() == array.tolist()

    response = parse_response(encode_response(decoded, "m", "7", {"OUT": decoded.inputs["IN"]}))
    assert (response.model_name, response.model_version, response.id) == ("m", "7", "abc")
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUT", datatype, [3, 2, 3])
    assert response.raw_output_contents == request.raw_input_contents


@pytest.mark.parametrize("datatype", TYPED_TYPES)
def test_typed_contents_every_datatype(datatype: str) -> None:
    spec = one_tensor_spec(datatype)
    array = sample(datatype, (2, 2, 3), seed=1)
    request = make_request([("IN", datatype, array)], typed=True)
    decoded = decode_request(request.SerializeToString(), spec)
    assert decoded.inputs["IN"].dtype == DATATYPES[datatype].numpy_dtype
    assert decoded.inputs["IN"].tolist() == array.tolist()
    raw_request = make_request([("IN", datatype, array)])
    response = parse_response(encode_response(decoded, "m", "1", decoded.inputs | {"OUT": array}))
    assert response.raw_output_contents == raw_request.raw_input_contents


def test_fp16_typed_contents_are_refused() -> None:
    spec = one_tensor_spec("FP16")
    request = make_request([("IN", "FP32", np.zeros((1, 2, 3), np.float32))], typed=True)
    request.inputs[0].datatype = "FP16"
    with pytest.raises(RequestError, match="input 'IN': FP16 data must be sent in raw") as info:
        decode_request(request.SerializeToString(), spec)
    assert info.value.code == INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("datatype", "value"), [("INT8", 300), ("UINT16", 70000), ("INT16", -40000)]
)
def test_typed_value_out_of_range(datatype: str, value: int) -> None:
    spec = one_tensor_spec(datatype, dims=(1,))
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="IN", datatype=datatype, shape=[1, 1])
    field = "uint_contents" if datatype.startswith("U") else "int_contents"
    getattr(tensor.contents, field).append(value)
    with pytest.raises(RequestError, match=f"input 'IN': a value is out of range for {datatype}"):
        decode_request(request.SerializeToString(), spec)


def test_decoded_inputs_follow_config_order_and_accept_memoryview() -> None:
    spec = make_spec(
        [("A", "INT32", (2,)), ("B", "FP32", (2,))], [("Y", "FP32", (2,))], max_batch_size=2
    )
    a = np.array([[1, 2]], np.int32)
    b = np.array([[0.5, 1.5]], np.float32)
    request = make_request([("B", "FP32", b), ("A", "INT32", a)])
    decoded = decode_request(memoryview(request.SerializeToString()), spec)
    assert list(decoded.inputs) == ["A", "B"]
    np.testing.assert_array_equal(decoded.inputs["A"], a)
    np.testing.assert_array_equal(decoded.inputs["B"], b)


def test_model_without_batching() -> None:
    spec = make_spec([("X", "INT64", (-1,))], [("Y", "INT64", (-1,))])
    x = np.arange(5, dtype=np.int64)
    decoded = decode_request(make_request([("X", "INT64", x)]).SerializeToString(), spec)
    assert decoded.batch_size == 1
    assert not decoded.batched
    np.testing.assert_array_equal(decoded.inputs["X"], x)
    other = decode_request(make_request([("X", "INT64", x)]).SerializeToString(), spec)
    assert batch_signature(decoded) != batch_signature(other)


def test_requested_outputs_in_config_order() -> None:
    spec = make_spec(
        [("X", "FP32", (2,))],
        [("O1", "FP32", (2,)), ("O2", "INT32", (2,)), ("O3", "BYTES", (2,))],
        max_batch_size=2,
    )
    x = np.ones((1, 2), np.float32)
    request = make_request([("X", "FP32", x)], outputs=["O3", "O1"])
    decoded = decode_request(request.SerializeToString(), spec)
    assert decoded.requested_outputs == ("O3", "O1")
    assert [t.name for t in decoded.outputs] == ["O1", "O3"]
    outputs = {
        "O1": x * 2,
        "O2": np.zeros((1, 2), np.int32),
        "O3": np.array([[b"a", "\u00e9"]], dtype=object),
    }
    response = parse_response(encode_response(decoded, "m", "1", outputs))
    assert [o.name for o in response.outputs] == ["O1", "O3"]
    assert [o.datatype for o in response.outputs] == ["FP32", "BYTES"]
    assert response.raw_output_contents[0] == (x * 2).tobytes()
    assert response.raw_output_contents[1] == b"\x01\x00\x00\x00a\x02\x00\x00\x00\xc3\xa9"

    everything = decode_request(make_request([("X", "FP32", x)]).SerializeToString(), spec)
    assert everything.requested_outputs is None
    assert [t.name for t in everything.outputs] == ["O1", "O2", "O3"]


def test_request_parameters_are_kept() -> None:
    spec = one_tensor_spec("INT32")
    request = make_request([("IN", "INT32", sample("INT32", (1, 2, 3)))])
    request.parameters["priority"].int64_param = 2
    request.parameters["tag"].string_param = "x"
    request.parameters["flag"].bool_param = True
    decoded = decode_request(request.SerializeToString(), spec)
    assert decoded.parameters == {"priority": 2, "tag": "x", "flag": True}


def test_bytes_framing() -> None:
    items = np.array([[b"", b"\x00\xffab"], ["h\u00e9", b"x" * 300]], dtype=object)
    data = encode_bytes_tensor(items)
    assert data[:4] == b"\x00\x00\x00\x00"
    decoded = decode_bytes_tensor(data, 4, "T")
    assert decoded.tolist() == [b"", b"\x00\xffab", "h\u00e9".encode(), b"x" * 300]
    assert decode_bytes_tensor(b"", 0).shape == (0,)
    fixed = np.array([b"ab", b"c"])  # numpy "S" arrays encode too
    assert encode_bytes_tensor(fixed) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (b"\x01\x00", 1, "element byte size indicator exceeds the end of the buffer"),
        (b"\x05\x00\x00\x00abc", 1, "element byte size indicator exceeds the end of the buffer"),
        (
            b"\x01\x00\x00\x00a\x01\x00\x00\x00",
            2,
            "element byte size indicator exceeds the end of the buffer",
        ),
        (
            b"\x01\x00\x00\x00a",
            3,
            "expected 3 string elements for inference input 'TEXT' for model 'm', got 1",
        ),
        (
            b"\x01\x00\x00\x00a\x00\x00\x00\x00",
            1,
            "unexpected number of string elements 2 for inference input 'TEXT' for model 'm', "
            "expecting 1",
        ),
        (b"", 10**12, "expected 1000000000000 string elements for inference input 'TEXT'"),
    ],
)
def test_bad_bytes_framing(data: bytes, count: int, message: str) -> None:
    # Triton's texts (core src/infer_request.cc, ValidateBytesInputs).
    with pytest.raises(RequestError) as info:
        decode_bytes_tensor(data, count, "TEXT", "m")
    assert info.value.code == INVALID_ARGUMENT
    assert message in info.value.message


def test_encode_response_errors_are_internal() -> None:
    spec = make_spec([("X", "FP32", (2,))], [("Y", "FP32", (2,)), ("S", "BYTES", (1,))], 2)
    x = np.ones((1, 2), np.float32)
    decoded = decode_request(make_request([("X", "FP32", x)]).SerializeToString(), spec)
    strings = np.array([[b"a"]], dtype=object)
    cases: list[tuple[dict[str, np.ndarray], str]] = [
        ({"S": strings}, "model 'm' produced no output 'Y'"),
        ({"Y": x.astype(np.float64), "S": strings}, "output 'Y' has dtype float64"),
        ({"Y": x, "S": np.array([[1]], dtype=object)}, "output 'S': BYTES elements must be"),
    ]
    for outputs, message in cases:
        with pytest.raises(RequestError) as info:
            encode_response(decoded, "m", "1", outputs)
        assert info.value.code == INTERNAL
        assert message in info.value.message


def test_batch_signature() -> None:
    spec = make_spec(
        [("A", "FP32", (-1,)), ("B", "INT32", (2,))], [("Y", "FP32", (-1,))], max_batch_size=8
    )

    def decode(rows: int, width: int) -> DecodedRequest:
        a = np.zeros((rows, width), np.float32)
        b = np.zeros((rows, 2), np.int32)
        request = make_request([("A", "FP32", a), ("B", "INT32", b)])
        return decode_request(request.SerializeToString(), spec)

    assert batch_signature(decode(1, 3)) == batch_signature(decode(5, 3))
    assert hash(batch_signature(decode(1, 3))) == hash(batch_signature(decode(5, 3)))
    assert batch_signature(decode(1, 3)) != batch_signature(decode(1, 4))


# --- every validation error: INVALID_ARGUMENT, naming the tensor ---------------------------------

SPEC = make_spec(
    [("INPUT0", "INT32", (4,)), ("INPUT1", "FP32", (-1, 2))],
    [("OUTPUT0", "INT32", (4,)), ("TEXT", "BYTES", (1,))],
    max_batch_size=4,
)
I0 = np.arange(8, dtype=np.int32).reshape(2, 4)
I1 = np.ones((2, 3, 2), np.float32)


def good() -> pb.ModelInferRequest:
    return make_request([("INPUT0", "INT32", I0), ("INPUT1", "FP32", I1)])


def typed_good() -> pb.ModelInferRequest:
    return make_request([("INPUT0", "INT32", I0), ("INPUT1", "FP32", I1)], typed=True)


def mutate(fn: Callable[[pb.ModelInferRequest], object], typed: bool = False) -> bytes:
    request = typed_good() if typed else good()
    fn(request)
    return request.SerializeToString()


def set_shape(index: int, shape: list[int]) -> Callable[[pb.ModelInferRequest], None]:
    def apply(request: pb.ModelInferRequest) -> None:
        del request.inputs[index].shape[:]
        request.inputs[index].shape.extend(shape)

    return apply


def drop_input(request: pb.ModelInferRequest) -> None:
    del request.inputs[1]
    del request.raw_input_contents[1]


def duplicate_input(request: pb.ModelInferRequest) -> None:
    request.inputs.add().CopyFrom(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])


def add_unknown(request: pb.ModelInferRequest) -> None:
    request.inputs.add(name="EXTRA", datatype="INT32", shape=[2, 1])
    request.raw_input_contents.append(b"\x00" * 8)


INVALID_CASES = [
    ("unknown input", mutate(add_unknown), "expected 2 inputs but got 3 inputs for model 'm'"),
    ("duplicate input", mutate(duplicate_input), "expected 2 inputs but got 3 inputs"),
    (
        "missing input",
        mutate(drop_input),
        "expected 2 inputs but got 1 inputs for model 'm'. Got input(s) ['INPUT0'], but "
        "missing required input(s) ['INPUT1']. Please provide all required input(s).",
    ),
    (
        "renamed input",
        mutate(lambda r: setattr(r.inputs[1], "name", "EXTRA")),
        "unexpected inference input 'EXTRA' for model 'm'",
    ),
    (
        "same input twice",
        mutate(lambda r: setattr(r.inputs[1], "name", "INPUT0")),
        "input 'INPUT0' already exists in request",
    ),
    (
        "datatype",
        mutate(lambda r: setattr(r.inputs[0], "datatype", "FP32")),
        "inference input 'INPUT0' data-type is 'FP32', but model 'm' expects 'INT32'",
    ),
    (
        "rank",
        mutate(set_shape(0, [3])),
        "unexpected shape for input 'INPUT0' for model 'm'. Expected [-1,4], got [3]",
    ),
    (
        "dims",
        mutate(set_shape(0, [1, 8])),
        "unexpected shape for input 'INPUT0' for model 'm'. Expected [-1,4], got [1,8]",
    ),
    (
        "dims after wildcard",
        mutate(set_shape(1, [2, 2, 3])),
        "unexpected shape for input 'INPUT1' for model 'm'. Expected [-1,-1,2], got [2,2,3]",
    ),
    ("batch zero", mutate(set_shape(0, [0, 4])), "Expected [-1,4], got [0,4]"),
    (
        "batch too big",
        mutate(set_shape(0, [5, 4])),
        "inference request batch-size must be <= 4 for 'm'",
    ),
    ("negative dim", mutate(set_shape(1, [2, -1, 2])), "Expected [-1,-1,2], got [2,-1,2]"),
    (
        "batch sizes differ",
        mutate(set_shape(1, [1, 6, 2])),
        "input 'INPUT1' batch size does not match other inputs for 'm'",
    ),
    (
        "raw size",
        mutate(lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 12)),
        "input byte size mismatch for input 'INPUT0' for model 'm'. Expected 32, got 12",
    ),
    (
        "raw and typed",
        mutate(lambda r: r.inputs[0].contents.int_contents.append(1)),
        "contents field must not be specified when using raw_input_contents for 'INPUT0' "
        "for model 'm'",
    ),
    (
        "raw missing",
        mutate(lambda r: r.raw_input_contents.pop()),
        "unable to find data for input tensor 'INPUT1' for model 'm' in request.",
    ),
    (
        "request id prefix",
        mutate(lambda r: (setattr(r, "id", "req-7"), set_shape(0, [5, 4])(r))),
        "[request id: req-7] inference request batch-size must be <= 4 for 'm'",
    ),
    (
        "raw count",
        mutate(lambda r: r.raw_input_contents.append(b"")),
        "raw_input_contents has 3 entries for 2 inputs",
    ),
    (
        "typed count",
        mutate(lambda r: r.inputs[1].contents.fp32_contents.append(1.0), typed=True),
        "input byte size mismatch for input 'INPUT1' for model 'm'. Expected 48, got 52",
    ),
    (
        "typed wrong field",
        mutate(lambda r: r.inputs[0].ClearField("contents"), typed=True),
        "input byte size mismatch for input 'INPUT0' for model 'm'. Expected 32, got 0",
    ),
    (
        "typed other field",
        mutate(
            lambda r: (
                r.inputs[0].ClearField("contents"),
                r.inputs[0].contents.fp32_contents.append(1.0),
            ),
            typed=True,
        ),
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'm' of type 'FP32', "
        "expected datatype 'INT32'",
    ),
    (
        "unknown output",
        mutate(lambda r: r.outputs.add(name="NOPE")),
        "unexpected inference output 'NOPE' for model 'm'",
    ),
    (
        "duplicate output",
        mutate(lambda r: (r.outputs.add(name="OUTPUT0"), r.outputs.add(name="OUTPUT0"))),
        "output 'OUTPUT0' is requested more than once",
    ),
    (
        "classification of BYTES",
        mutate(
            lambda r: setattr(
                r.outputs.add(name="TEXT").parameters["classification"], "int64_param", 3
            )
        ),
        "class result not available for output due to unsupported type 'BYTES'",
    ),
    (
        "shared memory",
        mutate(
            lambda r: setattr(r.inputs[1].parameters["shared_memory_byte_size"], "int64_param", 64)
        ),
        "'shared_memory_byte_size' can not be specified without 'shared_memory_region' "
        "parameter for tensor 'INPUT1'",
    ),
    ("malformed", b"\xff\xff\xff", "malformed ModelInferRequest"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_request(data: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(data, SPEC)
    assert info.value.code == INVALID_ARGUMENT
    assert message in info.value.message


def test_good_requests_decode() -> None:
    for request in (good(), typed_good()):
        decoded = decode_request(request.SerializeToString(), SPEC)
        assert decoded.batch_size == 2
        np.testing.assert_array_equal(decoded.inputs["INPUT0"], I0)
        np.testing.assert_array_equal(decoded.inputs["INPUT1"], I1)


def test_bytes_input_errors_name_the_input() -> None:
    spec = one_tensor_spec("BYTES", dims=(2,))
    request = pb.ModelInferRequest()
    request.inputs.add(name="IN", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a\x09\x00\x00\x00b")
    with pytest.raises(RequestError, match="element byte size indicator exceeds the end"):
        decode_request(request.SerializeToString(), spec)
    request.raw_input_contents[0] = b"\x01\x00\x00\x00a"
    with pytest.raises(RequestError, match="string elements for inference input 'IN' for model"):
        decode_request(request.SerializeToString(), spec)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2], "unexpected shape for input 'X' for model 'm'. Expected [-1,3], got [2]"),
        ([2, 4], "unexpected shape for input 'X' for model 'm'. Expected [-1,3], got [2,4]"),
        ([-2, 3], "unexpected shape for input 'X' for model 'm'. Expected [-1,3], got [-2,3]"),
    ],
)
def test_shape_errors_without_batching(shape: list[int], message: str) -> None:
    spec = make_spec([("X", "INT8", (-1, 3))], [("Y", "INT8", (-1, 3))])
    request = pb.ModelInferRequest()
    request.inputs.add(name="X", datatype="INT8", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(RequestError) as info:
        decode_request(request.SerializeToString(), spec)
    assert info.value.code == INVALID_ARGUMENT
    assert message in info.value.message
