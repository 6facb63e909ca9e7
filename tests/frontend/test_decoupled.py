"""The frontend's side of sequences and decoupled models: Triton's sequence parameters read from
a request, model traits from configs, and a decoupled request's responses streamed with credit,
cancelled at the deadline or when the caller goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from fabric import errors
from fabric.errors import RequestError
from fabric.protocol import SEQUENCE_END, SEQUENCE_START, SEQUENCE_STRING_ID
from frontend.decoupled import (
    NO_SEQUENCE,
    ModelTraits,
    sequence_fields,
    stream_decoupled,
    traits_of,
)
from frontend.fabric_client import Reply
from frontend.wire import RequestRoute
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc


def with_params(**params: Any) -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    for key, value in params.items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        else:
            param.string_param = value
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, NO_SEQUENCE),
        ({"sequence_id": 0, "sequence_start": True}, NO_SEQUENCE),  # 0 is "no sequence"
        ({"sequence_id": ""}, NO_SEQUENCE),
        ({"sequence_id": 1000}, ("1000", 0)),
        ({"sequence_id": 7, "sequence_start": True}, ("7", SEQUENCE_START)),
        ({"sequence_id": 7, "sequence_end": True}, ("7", SEQUENCE_END)),
        ({"sequence_id": "abc", "sequence_start": True, "sequence_end": False},
         ("abc", SEQUENCE_STRING_ID | SEQUENCE_START)),
    ],
)  # fmt: skip
def test_sequence_fields(params: dict[str, Any], expected: tuple[str, int]) -> None:
    assert sequence_fields(with_params(**params)) == expected


def test_uint64_ids_and_bad_ids() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["sequence_id"].uint64_param = 2**64 - 1
    assert sequence_fields(request.SerializeToString()) == (str(2**64 - 1), 0)
    for bad in (with_params(sequence_id=-3), with_params(sequence_id=True)):
        with pytest.raises(RequestError) as info:
            sequence_fields(bad)
        assert info.value.code == errors.INVALID_ARGUMENT
    with pytest.raises(RequestError):
        sequence_fields(with_params(sequence_id="x" * 300))


def test_traits_from_config() -> None:
    plain = mc.ModelConfig(name="m")
    assert traits_of(plain) == ModelTraits()
    seq = mc.ModelConfig(name="m")
    seq.sequence_batching.max_sequence_idle_microseconds = 5
    assert traits_of(seq) == ModelTraits(sequence=True)
    dec = mc.ModelConfig(name="m")
    dec.model_transaction_policy.decoupled = True
    assert traits_of(dec) == ModelTraits(decoupled=True)


class FakeClient:
    """Records what ``stream_decoupled`` does with the fabric."""

    def __init__(self) -> None:
        self.on_part: Callable[[Reply, bool], None] | None = None
        self.credits: list[tuple[int, int]] = []
        self.cancelled: list[int] = []

    def submit(self, model: str, version: str, deadline_ns: int, payload: bytes,
               on_part: Callable[[Reply, bool], None]) -> tuple[int, None, None]:  # fmt: skip
        self.on_part = on_part
        return 9, None, None

    def credit(self, request_id: int, responses: int) -> None:
        self.credits.append((request_id, responses))

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)


ROUTE = RequestRoute("repeat_int32", "", "rid")


def part(n: int) -> Reply:
    return Reply(errors.OK, "", pb.ModelInferResponse(id=f"p{n}").SerializeToString())


def response_id(body: bytes) -> str:
    return pb.ModelStreamInferResponse.FromString(body).infer_response.id


def test_parts_then_the_last_reply() -> None:
    asyncio.run(_parts_then_the_last_reply())


async def _parts_then_the_last_reply() -> None:
    client = FakeClient()
    stream = stream_decoupled(client, ROUTE, b"", 5.0)  # type: ignore[arg-type]
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert client.on_part is not None
    client.on_part(part(0), True)
    client.on_part(part(1), True)
    client.on_part(Reply(errors.OK, "", None), False)  # no empty final response asked for
    got = [await first]
    got += [p async for p in stream]
    assert [response_id(p.body) for p in got] == ["p0", "p1"]
    for p in got:
        assert p.taken is not None
        p.taken()
    assert client.credits == [(9, 1), (9, 1)]
    assert client.cancelled == []  # it ended by itself


def test_an_error_ends_the_stream_with_its_message() -> None:
    asyncio.run(_an_error_ends_the_stream_with_its_message())


async def _an_error_ends_the_stream_with_its_message() -> None:
    client = FakeClient()
    stream = stream_decoupled(client, ROUTE, b"", 5.0)  # type: ignore[arg-type]
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert client.on_part is not None
    client.on_part(Reply(errors.INVALID_ARGUMENT, "bad DELAY", None), False)
    error = pb.ModelStreamInferResponse.FromString((await first).body)
    assert error.error_message == "bad DELAY"
    assert error.infer_response.id == "rid"


def test_the_deadline_cancels_the_request() -> None:
    asyncio.run(_the_deadline_cancels_the_request())


async def _the_deadline_cancels_the_request() -> None:
    client = FakeClient()
    got = [p async for p in stream_decoupled(client, ROUTE, b"", 0.05)]  # type: ignore[arg-type]
    (only,) = got
    assert "deadline" in pb.ModelStreamInferResponse.FromString(only.body).error_message
    assert client.cancelled == [9]


def test_a_caller_that_goes_away_cancels_the_request() -> None:
    asyncio.run(_a_caller_that_goes_away_cancels_the_request())


async def _a_caller_that_goes_away_cancels_the_request() -> None:
    client = FakeClient()
    stream = stream_decoupled(client, ROUTE, b"", 5.0)  # type: ignore[arg-type]
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert client.on_part is not None
    client.on_part(part(0), True)
    await first
    await stream.aclose()
    assert client.cancelled == [9]
