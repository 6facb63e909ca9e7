"""Decoupled models end to end over tritonclient streaming: ``repeat_int32`` streams its N
responses in order with Triton's final-response flag, ModelInfer gets Triton's error, a
cancelled stream stops the generation, and a reader that does not read pauses the worker."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.stack import Stack, wait_for

RESULT_TIMEOUT_S = 30.0


class StreamClient:
    def __init__(self, url: str, on_response: Any = None) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(on_response or self._put)

    def _put(self, result: Any, error: Any) -> None:
        self.responses.put((result, error))

    def next(self, timeout_s: float = RESULT_TIMEOUT_S) -> tuple[Any, Any]:
        try:
            return self.responses.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no stream response within {timeout_s}s") from None

    def close(self, cancel: bool = True) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def repeat_inputs(
    values: list[int], delay_ms: int, wait_ms: int = 0
) -> list[grpcclient.InferInput]:
    tensors = []
    for name, data, datatype in (
        ("IN", np.array(values, dtype=np.int32), "INT32"),
        ("DELAY", np.full(len(values), delay_ms, dtype=np.uint32), "UINT32"),
        ("WAIT", np.array([wait_ms], dtype=np.uint32), "UINT32"),
    ):
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def final_flag(result: Any) -> bool | None:
    params = result.get_response().parameters
    return params["triton_final_response"].bool_param if "triton_final_response" in params else None


@pytest.mark.parametrize("empty_final", [True, False])
def test_repeat_int32_streams_each_value_in_order(stack: Stack, empty_final: bool) -> None:
    values = [4, -2, 0, 9, 7]
    stream = StreamClient(stack.frontend.url)
    try:
        stream.client.async_stream_infer(
            "repeat_int32",
            repeat_inputs(values, delay_ms=20),
            request_id="rep-1",
            enable_empty_final_response=empty_final,
        )
        got = []
        for _ in values:
            result, error = stream.next()
            assert error is None, error
            assert result.get_response().id == "rep-1"
            assert final_flag(result) is False
            got.append((int(result.as_numpy("OUT")[0]), int(result.as_numpy("IDX")[0])))
        assert got == [(v, i) for i, v in enumerate(values)]
        if empty_final:
            result, error = stream.next()
            assert error is None, error
            assert final_flag(result) is True
            assert result.get_response().id == "rep-1"
            assert len(result.get_response().outputs) == 0
        # Nothing else belongs to that request: the next response is another request's.
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([11], 0), request_id="next")
        result, error = stream.next()
        assert error is None, error
        assert result.get_response().id == "next"
    finally:
        stream.close()


def test_model_infer_on_a_decoupled_model_gets_tritons_error(stack: Stack) -> None:
    with pytest.raises(InferenceServerException) as info:
        stack.client().infer("repeat_int32", repeat_inputs([1], 0))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert info.value.message() == (
        "ModelInfer RPC doesn't support models with decoupled transaction policy"
    )


def test_a_model_error_ends_the_request_with_its_message(stack: Stack) -> None:
    stream = StreamClient(stack.frontend.url)
    try:
        bad = repeat_inputs([1, 2, 3], 0)
        delay = grpcclient.InferInput("DELAY", [2], "UINT32")
        delay.set_data_from_numpy(np.array([0, 0], dtype=np.uint32))
        stream.client.async_stream_infer("repeat_int32", [bad[0], delay, bad[2]], request_id="x")
        result, error = stream.next()
        assert result is None
        assert "DELAY has 2 elements, IN has 3" in str(error)
    finally:
        stream.close()


def test_cancelling_the_stream_stops_generation(stack: Stack) -> None:
    # 100 responses 50 ms apart: 5 s of work on repeat_int32's single instance.
    stream = StreamClient(stack.frontend.url)
    stream.client.async_stream_infer(
        "repeat_int32", repeat_inputs(list(range(100)), delay_ms=50), request_id="long"
    )
    for index in range(3):
        result, error = stream.next()
        assert error is None, error
        assert int(result.as_numpy("IDX")[0]) == index
    stream.close(cancel=True)
    cancelled_at = time.monotonic()
    # The instance is free again well before the 5 s of the cancelled request have passed.
    other = StreamClient(stack.frontend.url)
    try:
        other.client.async_stream_infer("repeat_int32", repeat_inputs([42], 0), request_id="after")
        result, error = other.next()
        assert error is None, error
        assert int(result.as_numpy("OUT")[0]) == 42
        assert time.monotonic() - cancelled_at < 3.0
    finally:
        other.close()


def test_a_reader_that_does_not_read_pauses_the_worker(stack: Stack, model_repo: Path) -> None:
    count, size = 400, 64 * 1024  # 25 MiB in all if nothing held generation back
    progress = model_repo / "trickle" / "1" / "progress"
    release = threading.Event()
    responses: list[tuple[int, int]] = []
    errors: list[Any] = []
    done = threading.Event()

    def on_response(result: Any, error: Any) -> None:
        release.wait(RESULT_TIMEOUT_S)  # the reader stalls: gRPC stops reading the stream
        if error is not None:
            errors.append(error)
            done.set()
            return
        data = result.as_numpy("DATA")
        responses.append((int(result.as_numpy("IDX")[0]), int(data[0]) if len(data) else -1))
        if len(responses) == count:
            done.set()

    stream = StreamClient(stack.frontend.url, on_response)
    try:
        inputs = []
        for name, value in (("COUNT", count), ("SIZE", size)):
            tensor = grpcclient.InferInput(name, [1], "INT32")
            tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
            inputs.append(tensor)
        stream.client.async_stream_infer("trickle", inputs, request_id="slow")
        wait_for(lambda: int(progress.read_text()) > 0, timeout_s=10.0, what="generation")
        time.sleep(2.0)  # a stalled reader: let generation run as far as it is allowed
        paused_at = int(progress.read_text())
        # The credit window and the transport's buffers, not the whole request.
        assert paused_at < count // 2, f"generated {paused_at} of {count} for a stalled reader"
        release.set()
        assert done.wait(RESULT_TIMEOUT_S * 2), f"{len(responses)} of {count} responses"
        assert not errors, errors
        assert responses == [(i, i % 256) for i in range(count)]
    finally:
        release.set()
        stream.close()
