"""Decoupled models on the worker: the credit window on a fake clock, and ``repeat_int32``
run through ``run_decoupled``: every response with ``more`` and the final flag false, the
empty final response when asked, a pause at the window, cancellation and deadlines mid-stream,
model errors, and the served version staying pending until the last reply."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from fabric import errors
from fabric.protocol import PeerId
from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_request
from worker.codec import decode_request
from worker.decoupled import StreamWindows, run_decoupled
from worker.demo_stateful import build_stateful
from worker.loaders import LoadedModel, load_model
from worker.repository import scan_model

FRONTEND: PeerId = b"fe"
WAIT_S = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_window_grants_and_stops() -> None:
    clock = FakeClock()
    windows = StreamWindows(window=2, clock=clock)
    key = (FRONTEND, 1)
    windows.open(key)
    assert windows.wait(key, 1, until_s=1.0, stop=lambda: False)  # 1 sent of 2
    clock.now = 2.0
    assert not windows.wait(key, 2, until_s=1.0, stop=lambda: False)  # full, deadline passed
    windows.grant(key, 1)
    assert windows.wait(key, 2, until_s=1.0, stop=lambda: False)
    assert not windows.wait(key, 3, until_s=99.0, stop=lambda: True)  # cancelled
    windows.grant((FRONTEND, 2), 5)  # an unknown request: ignored
    windows.close(key)
    assert len(windows) == 0


@pytest.fixture(scope="module")
def repeat(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("repo")
    build_stateful(root)
    return load_model(scan_model(root / "repeat_int32"), 1, "cpu")


class Sent:
    """The replies ``run_decoupled`` sends, in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes | None, bool]] = []
        self.cond = threading.Condition()

    def __call__(
        self, frontend: PeerId, rid: int, status: str, message: str, body: bytes | None, more: bool
    ) -> None:
        with self.cond:
            self.items.append((status, message, body, more))
            self.cond.notify_all()

    def wait_for(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, WAIT_S), self.items


def request(
    values: list[int], delay_ms: int = 0, empty_final: bool | None = None, delays: Any = None
) -> Any:
    delay = np.full(len(values), delay_ms, dtype=np.uint32) if delays is None else delays
    req = make_request(
        [
            ("IN", "INT32", np.array(values, dtype=np.int32)),
            ("DELAY", "UINT32", delay),
            ("WAIT", "UINT32", np.array([0], dtype=np.uint32)),
        ]
    )
    req.id = "rq"
    if empty_final is not None:
        req.parameters["triton_enable_empty_final_response"].bool_param = empty_final
    return req.SerializeToString()


def run(
    model: LoadedModel,
    payload: bytes,
    windows: StreamWindows,
    sent: Sent,
    cancelled: set[Any] | None = None,
    deadline_ns: int = 0,
) -> int:
    decoded = decode_request(payload, model.spec)
    cancels = cancelled if cancelled is not None else set()

    def take(key: Any) -> bool:
        if key in cancels:
            cancels.discard(key)
            return True
        return False

    return run_decoupled(
        model, decoded, FRONTEND, 7, deadline_ns, sent, lambda: None, windows, take
    )


def parts(sent: Sent) -> list[tuple[int, int, bool]]:
    out = []
    for status, _, body, more in sent.items:
        if more:
            assert status == errors.OK and body is not None
            response = pb.ModelInferResponse.FromString(body)
            assert response.id == "rq"
            value = int(np.frombuffer(response.raw_output_contents[0], dtype="<i4")[0])
            index = int(np.frombuffer(response.raw_output_contents[1], dtype="<u4")[0])
            final = response.parameters["triton_final_response"].bool_param
            out.append((value, index, final))
    return out


@pytest.mark.parametrize("empty_final", [None, True])
def test_each_value_is_a_response_then_the_last_reply(
    repeat: LoadedModel, empty_final: bool | None
) -> None:
    sent = Sent()
    assert run(repeat, request([5, 6, 7], empty_final=empty_final), StreamWindows(), sent) == 3
    assert parts(sent) == [(5, 0, False), (6, 1, False), (7, 2, False)]
    status, _, body, more = sent.items[-1]
    assert (status, more) == (errors.OK, False)
    if empty_final:
        assert body is not None
        final = pb.ModelInferResponse.FromString(body)
        assert final.parameters["triton_final_response"].bool_param is True
        assert (final.id, len(final.outputs)) == ("rq", 0)
    else:
        assert body is None  # nothing more reaches the client


def test_generation_pauses_at_the_window_until_credit(repeat: LoadedModel) -> None:
    windows = StreamWindows(window=2)
    sent = Sent()
    runner = threading.Thread(target=run, args=(repeat, request(list(range(6))), windows, sent))
    runner.start()
    sent.wait_for(2)
    time.sleep(0.2)
    assert len(sent.items) == 2  # paused: the reader took none
    windows.grant((FRONTEND, 7), 3)
    sent.wait_for(5)
    time.sleep(0.2)
    assert len(sent.items) == 5
    windows.grant((FRONTEND, 7), 10)
    runner.join(WAIT_S)
    assert [p[1] for p in parts(sent)] == list(range(6))
    assert sent.items[-1][0] == errors.OK


def test_cancellation_stops_generation_and_closes_the_generator(repeat: LoadedModel) -> None:
    windows = StreamWindows(window=1)
    sent = Sent()
    cancelled: set[Any] = set()
    runner = threading.Thread(
        target=run, args=(repeat, request(list(range(100))), windows, sent, cancelled)
    )
    runner.start()
    sent.wait_for(1)
    cancelled.add((FRONTEND, 7))
    windows.wake()
    runner.join(WAIT_S)
    assert not runner.is_alive()
    assert len(parts(sent)) == 1
    assert sent.items[-1][0] == errors.CANCELLED
    assert sent.items[-1][3] is False


def test_the_deadline_ends_a_stream(repeat: LoadedModel) -> None:
    sent = Sent()
    deadline_ns = time.time_ns() + 300_000_000
    run(repeat, request(list(range(50)), delay_ms=20), StreamWindows(), sent, None, deadline_ns)
    assert 1 <= len(parts(sent)) < 50
    assert sent.items[-1][0] == errors.DEADLINE_EXCEEDED


def test_a_model_error_ends_the_request(repeat: LoadedModel) -> None:
    sent = Sent()
    payload = request([1, 2, 3], delays=np.zeros(2, dtype=np.uint32))
    assert run(repeat, payload, StreamWindows(), sent) == 0
    ((status, message, body, more),) = sent.items
    assert (status, more, body) == (errors.INVALID_ARGUMENT, False, None)
    assert "DELAY has 2 elements, IN has 3" in message
