"""The sticky key: a metadata value, or a request parameter read from the raw bytes."""

from __future__ import annotations

from frontend.routing.config import parse_routing
from frontend.routing.keys import parameter_value, sticky_key
from frontend.routing.table import RouteState, build_state
from protos import grpc_service_pb2 as pb


def _request(**params: object) -> bytes:
    request = pb.ModelInferRequest(model_name="clf", id="r1")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    for name, value in params.items():
        p = request.parameters[name]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)
    return request.SerializeToString()


def test_parameter_values_of_every_kind() -> None:
    payload = _request(routing_key="user-9", n=-42, flag=True, x=0.5, other="z")
    assert parameter_value(payload, "routing_key") == b"user-9"
    assert parameter_value(payload, "n") == b"-42"
    assert parameter_value(payload, "flag") == b"true"
    assert parameter_value(payload, "x") == b"0.5"
    assert parameter_value(payload, "missing") is None
    assert parameter_value(_request(), "routing_key") is None


def test_a_malformed_request_has_no_key() -> None:
    assert parameter_value(b"\x22\x05ab", "routing_key") is None  # truncated entry
    assert parameter_value(b"\xff", "routing_key") is None


def _state(sticky: str) -> RouteState:
    text = (
        "routes:\n  clf:\n    targets: [{model: clf, version: '1', weight: 100}]\n"
        f"    sticky: {sticky}\n"
    )
    return build_state("clf", parse_routing(text.encode()).routes["clf"])


def test_sticky_key_from_a_header_or_a_parameter() -> None:
    by_header = _state("{header: x-routing-key}")
    md = [("user-agent", "grpc"), ("x-routing-key", "user-1")]
    assert sticky_key(by_header, b"", lambda: md) == b"user-1"
    other: list[tuple[str, str | bytes]] = [("x-routing-key-bin", b"\x00")]
    assert sticky_key(by_header, b"", lambda: other) is None
    assert sticky_key(by_header, b"", None) is None
    by_parameter = _state("{parameter: routing_key}")
    payload = _request(routing_key="user-2")
    assert sticky_key(by_parameter, payload, None) == b"user-2"
