"""Routing fields read from raw ModelInferRequest bytes; stream responses built from raw bytes.

Every case is checked against the real protobuf parser from our generated stubs.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.errors import INVALID_ARGUMENT, RequestError
from frontend.wire import RequestRoute, scan_request, stream_error, stream_response
from protos import grpc_service_pb2 as pb


def full_request(
    name: str = "simple", version: str = "3", rid: str = "req-1"
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id=rid)
    req.parameters["priority"].int64_param = 5
    req.parameters["sequence_id"].string_param = "s-1"
    for i in range(2):
        tensor = req.inputs.add(name=f"INPUT{i}", datatype="INT32", shape=[1, 16])
        tensor.parameters["binary_data_size"].int64_param = 64
    req.inputs[0].contents.int_contents.extend(range(-8, 8))
    req.outputs.add(name="OUTPUT0")
    req.raw_input_contents.extend([bytes(range(64)), b"\x00" * 300])
    return req


def route_of(data: bytes) -> RequestRoute:
    """What protobuf itself says the routing fields are."""
    req = pb.ModelInferRequest.FromString(data)
    return RequestRoute(req.model_name, req.model_version, req.id)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, wire: int, body: bytes) -> bytes:
    tag = varint(number << 3 | wire)
    return tag + (varint(len(body)) + body if wire == 2 else body)


def assert_invalid(data: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        scan_request(data)
    assert info.value.code == INVALID_ARGUMENT
    assert info.value.message
    return info.value


# ---- scan_request: valid requests ----------------------------------------------------------


def test_scan_full_request() -> None:
    data = full_request().SerializeToString()
    assert scan_request(data) == RequestRoute("simple", "3", "req-1")
    assert scan_request(memoryview(data)) == RequestRoute("simple", "3", "req-1")


def test_scan_empty_request_gives_empty_fields() -> None:
    assert scan_request(b"") == RequestRoute("", "", "")
    data = pb.ModelInferRequest(model_name="m").SerializeToString()
    assert scan_request(data) == RequestRoute("m", "", "")


def test_scan_fields_in_any_order_with_payload_around_them() -> None:
    # Protobuf parsers accept fields in any order; concatenated messages merge.
    pieces = [
        pb.ModelInferRequest(raw_input_contents=[b"\x01" * 200]).SerializeToString(),
        pb.ModelInferRequest(id="abc").SerializeToString(),
        full_request("", "", "").SerializeToString(),
        pb.ModelInferRequest(model_version="12").SerializeToString(),
        pb.ModelInferRequest(model_name="ünïcode/名前").SerializeToString(),
        pb.ModelInferRequest(
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="O")]
        ).SerializeToString(),
    ]
    data = b"".join(pieces)
    expected = RequestRoute("ünïcode/名前", "12", "abc")
    assert route_of(data) == expected
    assert scan_request(data) == expected


def test_scan_last_value_wins() -> None:
    data = b"".join(
        [
            full_request("first", "1", "id-1").SerializeToString(),
            pb.ModelInferRequest(model_name="second", id="id-2").SerializeToString(),
            pb.ModelInferRequest(model_version="2").SerializeToString(),
            pb.ModelInferRequest(model_name="third").SerializeToString(),
        ]
    )
    assert route_of(data) == RequestRoute("third", "2", "id-2")
    assert scan_request(data) == RequestRoute("third", "2", "id-2")


def test_scan_skips_unknown_fields_of_every_wire_type() -> None:
    data = b"".join(
        [
            field(100, 0, varint(2**63)),  # varint, 10 bytes
            field(101, 1, b"\xff" * 8),  # fixed64
            field(1, 2, b"name"),
            field(102, 5, b"\x01\x02\x03\x04"),  # fixed32
            field(103, 2, b"\x0a\x04fake"),  # a nested message that looks like a name
            field(3, 2, b"the-id"),
            field(2**29 - 1, 0, b"\x01"),  # the largest field number
        ]
    )
    assert route_of(data) == RequestRoute("name", "", "the-id")
    assert scan_request(data) == RequestRoute("name", "", "the-id")


def test_scan_large_request() -> None:
    req = full_request("big", "1", "x")
    req.raw_input_contents.append(b"\x07" * (3 * 1024 * 1024))  # multi-byte length varint
    assert scan_request(req.SerializeToString()) == RequestRoute("big", "1", "x")


# ---- scan_request: malformed bytes ---------------------------------------------------------


def test_truncated_request_is_invalid_exactly_when_protobuf_says_so() -> None:
    data = full_request().SerializeToString()
    invalid = 0
    for cut in range(1, len(data)):
        prefix = data[:cut]
        try:
            expected = route_of(prefix)
        except DecodeError:
            assert_invalid(prefix)
            invalid += 1
        else:
            assert scan_request(prefix) == expected
    assert invalid > len(data) // 2  # most cuts land inside a field


@pytest.mark.parametrize(
    "data",
    [
        field(1, 2, b"simple")[:-1],  # length says more than there is
        b"\x0a\x05abc",
        b"\x0a",  # tag, no length
        b"\x0a\x80",  # unterminated length varint
        b"\x80",  # unterminated tag varint
        b"\x80" * 11,  # varint longer than 64 bits
        b"\x0a\x01m" + b"\xff" * 12,
        field(100, 1, b"\x00" * 7),  # fixed64 cut short
        field(100, 5, b"\x00" * 3),  # fixed32 cut short
        field(100, 0, b""),  # varint field without its value
    ],
    ids=repr,
)
def test_truncated_or_bad_varint(data: bytes) -> None:
    assert_invalid(data)


@pytest.mark.parametrize("wire", [4, 6, 7])
def test_bad_wire_type(wire: int) -> None:
    data = field(1, 2, b"simple") + varint(9 << 3 | wire) + b"\x00" * 8
    assert "wire type" in assert_invalid(data).message


def test_groups_are_skipped_as_protobuf_skips_them() -> None:
    # A (deprecated) group of an unknown field, even one holding a model_name, is skipped.
    data = varint(9 << 3 | 3) + field(1, 2, b"inner") + varint(9 << 3 | 4) + field(1, 2, b"m")
    assert pb.ModelInferRequest.FromString(data).model_name == "m"
    assert scan_request(data).model == "m"
    assert "unterminated group" in assert_invalid(varint(9 << 3 | 3) + field(1, 2, b"m")).message


@pytest.mark.parametrize("number", [1, 2, 3])
@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\x28", b"ok\xe2\x82", b"\xed\xa0\x80"])
def test_non_utf8_routing_field(number: int, raw: bytes) -> None:
    data = field(1, 2, b"simple") + field(number, 2, raw)
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)  # protobuf agrees: strings must be UTF-8
    assert "UTF-8" in assert_invalid(data).message


def test_non_utf8_elsewhere_is_not_our_business() -> None:
    data = field(1, 2, b"simple") + field(7, 2, b"\xff\xfe")  # raw bytes are bytes
    assert scan_request(data) == RequestRoute("simple", "", "")


text = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


@settings(max_examples=200, deadline=None)
@given(
    name=text,
    version=text,
    rid=text,
    raw=st.lists(st.binary(max_size=300), max_size=3),
    params=st.dictionaries(text, st.integers(-(2**63), 2**63 - 1), max_size=3),
    shape=st.lists(st.integers(-1, 2**40), max_size=4),
)
def test_scan_round_trips_random_requests(
    name: str, version: str, rid: str, raw: list[bytes], params: dict[str, int], shape: list[int]
) -> None:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id=rid)
    req.raw_input_contents.extend(raw)
    for key, value in params.items():
        req.parameters[key].int64_param = value
    req.inputs.add(name="IN", datatype="FP32", shape=shape)
    data = req.SerializeToString()
    assert scan_request(data) == RequestRoute(name, version, rid)
    assert scan_request(memoryview(data)) == RequestRoute(name, version, rid)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_scan_random_bytes_agrees_with_protobuf_or_fails_cleanly(data: bytes) -> None:
    # Random bytes either scan (possibly where protobuf would reject nested junk) or raise
    # INVALID_ARGUMENT; nothing else escapes. When protobuf accepts them we must agree.
    try:
        got = scan_request(data)
    except RequestError as exc:
        assert exc.code == INVALID_ARGUMENT
        got = None
    try:
        expected = route_of(data)
    except DecodeError:
        return
    assert got == expected


# ---- stream responses ------------------------------------------------------------------------


def infer_response(size: int = 16) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name="simple", model_version="1", id="req-9")
    out = resp.outputs.add(name="OUTPUT0", datatype="INT32", shape=[1, size])
    out.parameters["binary_data_size"].int64_param = 4 * size
    resp.raw_output_contents.append(b"\x01\x00\x00\x00" * size)
    return resp


@pytest.mark.parametrize("size", [0, 1, 40, 5000, 300_000])
def test_stream_response_parses_back(size: int) -> None:
    resp = infer_response(size) if size else pb.ModelInferResponse()
    data = resp.SerializeToString()
    for raw in (data, memoryview(data)):
        stream = pb.ModelStreamInferResponse.FromString(stream_response(raw))
        assert stream.error_message == ""
        assert stream.HasField("infer_response")
        assert stream.infer_response == resp


def test_stream_response_is_what_protobuf_would_write() -> None:
    resp = pb.ModelInferResponse(model_name="m", id="1", raw_output_contents=[b"x" * 200])
    expected = pb.ModelStreamInferResponse(infer_response=resp).SerializeToString()
    assert stream_response(resp.SerializeToString()) == expected


@pytest.mark.parametrize("message", ["", "boom", "ünïcode: 名前 ✓", "x" * 70_000])
def test_stream_error_parses_back(message: str) -> None:
    failed = pb.ModelInferResponse(model_name="simple", model_version="2", id="req-3")
    data = stream_error(message, failed.SerializeToString())
    stream = pb.ModelStreamInferResponse.FromString(data)
    assert stream.error_message == message
    assert stream.infer_response == failed
    assert (stream.infer_response.model_name, stream.infer_response.id) == ("simple", "req-3")


@settings(max_examples=100, deadline=None)
@given(message=text, name=text, rid=text, raw=st.binary(max_size=2000))
def test_stream_error_round_trips_random_content(
    message: str, name: str, rid: str, raw: bytes
) -> None:
    failed = pb.ModelInferResponse(model_name=name, id=rid, raw_output_contents=[raw])
    stream = pb.ModelStreamInferResponse.FromString(
        stream_error(message, failed.SerializeToString())
    )
    assert stream.error_message == message
    assert stream.infer_response == failed
