"""ModelStreamInfer: ids and data matched per response; replies come as they complete."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.helpers import (
    assert_int_outputs,
    rand_int32,
    simple_expected,
    simple_inputs,
)
from tests.integration.stack import Stack

RESULT_TIMEOUT_S = 30.0
SLOW_DELAY_MS = 1500


class StreamClient:
    """A tritonclient with an open stream whose callbacks land in a queue, in arrival order."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any, float]] = queue.Queue()
        self.client.start_stream(
            lambda result, error: self.responses.put((result, error, time.monotonic()))
        )

    def send(self, model: str, inputs: list[grpcclient.InferInput], request_id: str) -> None:
        self.client.async_stream_infer(model, inputs, request_id=request_id)

    def next(self) -> tuple[Any, Any, float]:
        try:
            return self.responses.get(timeout=RESULT_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no stream response within {RESULT_TIMEOUT_S}s") from None

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


@pytest.fixture
def stream(stack: Stack) -> Iterator[StreamClient]:
    client = StreamClient(stack.frontend.url)
    yield client
    client.close()


def sleepy_inputs(delay_ms: int) -> list[grpcclient.InferInput]:
    delay = grpcclient.InferInput("DELAY_MS", [1, 1], "INT32")
    delay.set_data_from_numpy(np.array([[delay_ms]], dtype=np.int32))
    return [delay]


def test_stream_ids_and_data(stream: StreamClient) -> None:
    rng = np.random.default_rng(77)
    expected = {}
    for i in range(20):
        a, b = rand_int32(rng, 1 + i % 4), rand_int32(rng, 1 + i % 4)
        expected[f"s-{i}"] = simple_expected(a, b)
        stream.send("simple", simple_inputs(a, b), f"s-{i}")
    seen = set()
    for _ in expected:
        result, error, _ = stream.next()
        assert error is None, f"stream error: {error}"
        request_id = result.get_response().id
        assert request_id in expected, f"unexpected id {request_id!r}"
        assert request_id not in seen, f"two responses for {request_id}"
        seen.add(request_id)
        assert_int_outputs(result, expected[request_id])
    assert seen == set(expected)


@pytest.mark.timeout(60)
def test_stream_responses_out_of_order(stream: StreamClient) -> None:
    """A slow request sent first must not hold back fast ones sent after it on the stream."""
    rng = np.random.default_rng(78)
    stream.send("sleepy", sleepy_inputs(SLOW_DELAY_MS), "slow-0")
    send_order = ["slow-0"]
    expected = {}
    for i in range(5):
        a, b = rand_int32(rng, 1), rand_int32(rng, 1)
        expected[f"fast-{i}"] = simple_expected(a, b)
        stream.send("simple", simple_inputs(a, b), f"fast-{i}")
        send_order.append(f"fast-{i}")

    arrival = []
    for _ in send_order:
        result, error, _ = stream.next()
        assert error is None, f"stream error: {error}"
        request_id = result.get_response().id
        arrival.append(request_id)
        if request_id == "slow-0":
            out = result.as_numpy("OUTPUT0")
            assert out is not None and out.tolist() == [[SLOW_DELAY_MS]]
        else:
            assert_int_outputs(result, expected[request_id])
    assert sorted(arrival) == sorted(send_order), f"ids not matched: {arrival}"
    assert arrival != send_order, "stream responses came back strictly in send order"
    assert arrival[-1] == "slow-0", f"the slow request should finish last: {arrival}"


def test_stream_same_model_completes_by_delay(stream: StreamClient) -> None:
    """``sleepy_pair`` has two instances and no dynamic batching: 600 ms runs on one instance
    while 0 ms then 100 ms run on the other, so replies come back ordered by delay."""
    delays = {"d-600": 600, "d-0": 0, "d-100": 100}
    for request_id, delay in delays.items():
        stream.send("sleepy_pair", sleepy_inputs(delay), request_id)
    arrival = []
    got = {}
    for _ in delays:
        result, error, _ = stream.next()
        assert error is None, f"stream error: {error}"
        request_id = result.get_response().id
        assert request_id not in got, f"two responses for {request_id}"
        arrival.append(request_id)
        got[request_id] = result.as_numpy("OUTPUT0").tolist()
    assert got == {rid: [[delay]] for rid, delay in delays.items()}
    assert arrival == ["d-0", "d-100", "d-600"], f"arrival order {arrival}"


def test_stream_error_keeps_stream_open(stream: StreamClient) -> None:
    rng = np.random.default_rng(79)
    a, b = rand_int32(rng, 1), rand_int32(rng, 1)
    stream.send("no_such_model", simple_inputs(a, b), "bad-0")
    result, error, _ = stream.next()
    assert result is None
    assert error is not None and "no_such_model" in error.message(), error

    faulty = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    faulty.set_data_from_numpy(np.array([[1, -3, 2, 5]], dtype=np.int32))
    stream.send("faulty", [faulty], "bad-1")
    result, error, _ = stream.next()
    assert result is None
    assert error is not None and "faulty model refuses negative input -3" in error.message()

    stream.send("simple", simple_inputs(a, b), "good-0")
    result, error, _ = stream.next()
    assert error is None, f"stream unusable after errors: {error}"
    assert result.get_response().id == "good-0"
    assert_int_outputs(result, simple_expected(a, b))


@pytest.mark.timeout(120)
def test_concurrent_streams_keep_their_own_responses(stack: Stack) -> None:
    """Four clients, each with its own stream and 50 requests in flight: every stream gets
    exactly its own answers."""
    streams = [StreamClient(stack.frontend.url) for _ in range(4)]
    try:
        expected: list[dict[str, dict[str, np.ndarray]]] = []
        for s_index, stream_client in enumerate(streams):
            rng = np.random.default_rng(900 + s_index)
            mine = {}
            for i in range(50):
                a, b = rand_int32(rng, 1 + i % 3), rand_int32(rng, 1 + i % 3)
                request_id = f"st{s_index}-{i}"
                mine[request_id] = simple_expected(a, b)
                stream_client.send("simple", simple_inputs(a, b), request_id)
            expected.append(mine)
        for stream_client, mine in zip(streams, expected, strict=True):
            seen = set()
            for _ in mine:
                result, error, _ = stream_client.next()
                assert error is None, f"stream error: {error}"
                request_id = result.get_response().id
                assert request_id in mine, f"foreign or unknown id {request_id!r} on this stream"
                assert request_id not in seen
                seen.add(request_id)
                assert_int_outputs(result, mine[request_id])
            assert stream_client.responses.empty(), "more responses than requests"
    finally:
        for stream_client in streams:
            stream_client.close()
