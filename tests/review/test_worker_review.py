"""Review findings in the worker: requests left without a reply, control ops never answered,
and a cancel board whose upkeep is O(n) per cancellation."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import worker.batch_step as batch_step
from fabric import errors
from fabric.inproc import iter_inproc
from fabric.messages import Message, iter_messages
from fabric.protocol import ControlHeader, ControlReplyHeader, MsgType
from tests.worker.test_runtime import (
    Harness,
    Probe,
    batching,
    inbound,
    request_bytes,
    thread_alive,
    write_model,
)
from worker.loaders import LoadedModel, load_model
from worker.models import ServedVersion, refuse_leftovers
from worker.repository import scan_model
from worker.runtime import CancelBoard
from worker.server import WorkerServer

# The compute-thread test kills a thread on purpose (that is the bug it shows).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def ragged_model(tmp_path: Path) -> Iterator[LoadedModel]:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", batching())), 1, "cpu")
    yield model
    Probe(model).open_gate()


def rows(n: int = 1) -> bytes:
    return request_bytes({"X": np.arange(3 * n, dtype=np.int64).reshape(n, 3)})


def test_requests_behind_stop_marker_are_answered(ragged_model: LoadedModel) -> None:
    h = Harness(ragged_model)
    instance = h.instances[0]
    served = ServedVersion(ragged_model, h.inbox, h.stats, 4, h.instances, reply=h.replies)
    instance.stop()  # _retire saw pending == 0 and stopped the instance ...
    h.put(inbound(1, rows()))  # ... while the I/O thread still held the old ServedVersion
    h.start()
    instance.join(5.0)
    assert not thread_alive(instance.name)
    refuse_leftovers(served)  # what ModelTable._retire (and the I/O thread) do after the stop
    assert [(r.request_id, r.status) for r in h.replies.items] == [(1, errors.UNAVAILABLE)]


def test_compute_thread_survives_an_unexpected_error_after_the_batch(
    ragged_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_step.encode_response_parts
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("Message too large to serialize")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_step, "encode_response_parts", flaky)
    h = Harness(ragged_model).start()
    try:
        h.put(inbound(1, rows()))
        deadline = time.monotonic() + 10.0
        while calls["n"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        h.put(inbound(2, rows()))
        replies = h.replies.wait_for(2, timeout_s=2.0)
        assert {r.request_id for r in replies} == {1, 2}
    finally:
        for inst in h.instances:
            inst.stop()
        for inst in h.instances:
            inst.join(2.0)
        h.started = False


class CountingDict(OrderedDict[tuple[bytes, int], float]):
    scans = 0

    def items(self):  # type: ignore[no-untyped-def,override]
        CountingDict.scans += 1
        return super().items()


def test_cancel_board_add_is_not_a_full_scan() -> None:
    board = CancelBoard()
    board._keys = CountingDict()
    for i in range(5000):  # e.g. requests that finished before their cancel arrived
        board.add((b"fe", i))
    CountingDict.scans = 0
    for i in range(5000, 5100):
        board.add((b"fe", i))
    assert CountingDict.scans <= 2, f"{CountingDict.scans} full scans for 100 cancels"


class FailingModels:
    def load(self, model: str, version: str) -> None:
        raise OSError("permission denied reading the repository")


def test_control_op_failing_unexpectedly_is_answered() -> None:
    server = WorkerServer.__new__(WorkerServer)  # only the control path, no sockets
    pushed: list[list[bytes]] = []
    server.models = FailingModels()  # type: ignore[assignment]
    server._push = pushed.append  # type: ignore[method-assign]
    try:
        server._run_control(ControlHeader(9, "load", "m"), b"\x00fe-1")
    except Exception:
        pass  # the control loop logs it; what matters is whether a reply went out
    replies = [
        msg.header
        for frames in pushed
        for item in iter_inproc(frames)
        if isinstance(item, tuple)
        for msg in iter_messages(item[1], routed=True)
        if isinstance(msg, Message) and msg.type is MsgType.CONTROL_REPLY
    ]
    assert len(replies) == 1
    assert isinstance(replies[0], ControlReplyHeader)
    assert replies[0].status == errors.INTERNAL
