"""Sequence batching end to end: Triton's sequence examples as its clients run them (stream and
unary), Triton's error texts, many sequences interleaved on one stream, sequences pinned across
two workers under load, and a worker killed mid-sequence failing only its own sequences."""

from __future__ import annotations

import queue
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import write_python_model
from tests.integration.stack import Stack, owned_stacks, wait_for

RESULT_TIMEOUT_S = 30.0
VALUES = [11, 7, 5, 3, 2, 0, 1]  # Triton's simple_grpc_sequence_*_client.py values

ACCUMULATE_CONFIG = """\
name: "accumulate"
backend: "python"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  oldest { max_queue_delay_microseconds: 1000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "PID" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

ACCUMULATE_MODEL = '''\
"""A real accumulator: state per sequence in this instance. A request that reached another
instance or worker than its START would find no state and fail."""

import os

import numpy as np


class Model:
    def load(self, config, device):
        self.sums = {}

    def execute(self, inputs):
        out = []
        for value, start, end, corrid in zip(
            inputs["INPUT"][:, 0], inputs["START"][:, 0], inputs["END"][:, 0],
            inputs["CORRID"][:, 0],
        ):
            key = int(corrid)
            if start:
                self.sums[key] = 0
            self.sums[key] += int(value)  # KeyError: the sequence is not on this instance
            out.append(self.sums[key])
            if end:
                del self.sums[key]
        rows = len(out)
        return {
            "OUTPUT": np.array(out, dtype=np.int32).reshape(rows, 1),
            "PID": np.full((rows, 1), os.getpid(), dtype=np.int32),
        }
'''


class StreamClient:
    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(lambda result, error: self.responses.put((result, error)))

    def next(self) -> tuple[Any, Any]:
        try:
            return self.responses.get(timeout=RESULT_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no stream response within {RESULT_TIMEOUT_S}s") from None

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def int_input(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [tensor]


def send_sequence(
    stream: StreamClient, model: str, sequence_id: int | str, values: list[int]
) -> None:
    """As Triton's ``async_stream_send``: request ids ``<sequence>_<n>``."""
    for count, value in enumerate(values, start=1):
        stream.client.async_stream_infer(
            model_name=model,
            inputs=int_input(value),
            request_id=f"{sequence_id}_{count}",
            sequence_id=sequence_id,
            sequence_start=count == 1,
            sequence_end=count == len(values),
        )


def collect(stream: StreamClient, count: int) -> dict[str, list[tuple[int, int]]]:
    """``count`` stream responses as {sequence: [(request number, OUTPUT)]}, in arrival order."""
    by_sequence: dict[str, list[tuple[int, int]]] = {}
    for _ in range(count):
        result, error = stream.next()
        assert error is None, error
        sequence, number = result.get_response().id.rsplit("_", 1)
        by_sequence.setdefault(sequence, []).append(
            (int(number), int(result.as_numpy("OUTPUT")[0][0]))
        )
    return by_sequence


@pytest.mark.parametrize("dyna", [False, True])
def test_tritons_sequence_stream_example(stack: Stack, dyna: bool) -> None:
    model = "simple_dyna_sequence" if dyna else "simple_sequence"
    stream = StreamClient(stack.frontend.url)
    try:
        send_sequence(stream, model, 1000, [0, *VALUES])
        send_sequence(stream, model, 1001, [100, *(-v for v in VALUES)])
        if not dyna:  # a string id (the dyna model's CORRID is a UINT64)
            send_sequence(stream, model, "seq-abc", [20, *(-v for v in VALUES)])
        got = collect(stream, (len(VALUES) + 1) * (2 if dyna else 3))
    finally:
        stream.close()
    for sequence, first, sign in (("1000", 1, 1), ("1001", 101, -1), ("seq-abc", 21, -1)):
        if dyna and sequence == "seq-abc":
            continue
        expected = [first] + [sign * v for v in VALUES]
        if dyna:  # simple_dyna_sequence adds the correlation id to the END response
            expected[-1] += int(sequence)
        # in order within each sequence, each response carrying its request's id
        assert got[sequence] == list(enumerate(expected, start=1)), sequence


def test_sequence_over_unary_model_infer(stack: Stack) -> None:
    client = stack.client()
    outputs = []
    for count, value in enumerate([5, 6, 7], start=1):
        result = client.infer(
            "simple_dyna_sequence",
            int_input(value),
            request_id=f"r{count}",
            sequence_id=77,
            sequence_start=count == 1,
            sequence_end=count == 3,
        )
        assert result.get_response().id == f"r{count}"
        outputs.append(int(result.as_numpy("OUTPUT")[0][0]))
    assert outputs == [6, 6, 7 + 77]


def test_a_sequence_must_start_and_have_an_id(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple_sequence", int_input(1), sequence_id=4242)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == (
        "inference request for sequence 4242 to model 'simple_sequence' must specify the START "
        "flag on the first request of the sequence"
    )
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple_sequence", int_input(1))
    assert "must specify a non-zero or non-empty correlation ID" in str(info.value.message())
    client.infer("simple_sequence", int_input(1), sequence_id=4242, sequence_start=True,
                 sequence_end=True)  # fmt: skip
    with pytest.raises(InferenceServerException) as info:  # ended: must start again
        client.infer("simple_sequence", int_input(1), sequence_id=4242)
    assert "must specify the START flag" in str(info.value.message())


def test_many_sequences_interleaved_on_one_stream(stack: Stack) -> None:
    stream = StreamClient(stack.frontend.url)
    ids = list(range(5000, 5024))
    try:
        for step in range(len(VALUES) + 1):
            for sequence_id in ids:
                values = [sequence_id % 7, *VALUES]
                stream.client.async_stream_infer(
                    model_name="simple_sequence",
                    inputs=int_input(values[step]),
                    request_id=f"{sequence_id}_{step + 1}",
                    sequence_id=sequence_id,
                    sequence_start=step == 0,
                    sequence_end=step == len(VALUES),
                )
        got = collect(stream, len(ids) * (len(VALUES) + 1))
    finally:
        stream.close()
    for sequence_id in ids:
        expected = [sequence_id % 7 + 1, *VALUES]
        assert got[str(sequence_id)] == list(enumerate(expected, start=1))


# ---- two workers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def accumulate_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("sequence_repo") / "models"
    repo.mkdir()
    shutil.copytree(demo_repo / "simple_sequence", repo / "simple_sequence")
    write_python_model(repo, "accumulate", ACCUMULATE_CONFIG, ACCUMULATE_MODEL)
    return repo


@pytest.fixture
def two_workers(
    accumulate_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    from tests.integration.conftest import _register

    for make in owned_stacks(
        lambda i: Stack(log_dir=tmp_path, model_repository=accumulate_repo, name=f"seq{i}"),
        lambda stack: _register(request, stack),
    ):
        stack = make()
        stack.start_broker()
        stack.start_worker()
        stack.start_worker()
        stack.start_frontend()
        stack.wait_live()
        stack.wait_ready(["accumulate"])
        yield stack


def run_sequence(url: str, sequence_id: int, steps: int, out: dict[int, Any]) -> None:
    """One sequence over unary calls: [(OUTPUT, PID) per step] or the error that ended it."""
    client = grpcclient.InferenceServerClient(url)
    got: list[tuple[int, int]] = []
    try:
        for step in range(steps):
            result = client.infer(
                "accumulate",
                int_input(step + 1),
                sequence_id=sequence_id,
                sequence_start=step == 0,
                sequence_end=step == steps - 1,
                client_timeout=RESULT_TIMEOUT_S,
            )
            got.append((int(result.as_numpy("OUTPUT")[0][0]), int(result.as_numpy("PID")[0][0])))
        out[sequence_id] = got
    except InferenceServerException as exc:
        out[sequence_id] = (got, exc)
    finally:
        client.close()


def test_sequences_stay_on_their_worker_under_load_and_a_killed_worker_fails_only_its_own(
    two_workers: Stack,
) -> None:
    stack = two_workers
    # Both workers must be in the broker's table before sequences start, or all go to one.
    # New sequences go to the worker holding the fewest: those opened while only one worker
    # had joined are ended, so both start even.
    opened: list[int] = []
    wait_for(
        lambda: len(_pids_of_open_sequences(stack, opened, 4)) == 2,
        timeout_s=60.0,
        what="sequences spread over both workers",
    )
    client = stack.client()
    for sequence_id in opened:
        client.infer("accumulate", int_input(0), sequence_id=sequence_id, sequence_end=True)
    steps = 12
    results: dict[int, Any] = {}
    threads = [
        threading.Thread(target=run_sequence, args=(stack.frontend.url, 100 + i, steps, results))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = [sum(range(1, n + 2)) for n in range(steps)]
    pids: set[int] = set()
    for sequence_id in range(100, 116):
        got = results[sequence_id]
        assert isinstance(got, list), f"sequence {sequence_id} failed: {got}"
        assert [o for o, _ in got] == expected
        assert len({p for _, p in got}) == 1  # one worker held the whole sequence
        pids.add(got[0][1])
    assert len(pids) == 2, results  # and the sequences were spread over both workers

    # Now start one sequence per worker, kill one worker mid-sequence.
    by_pid: dict[int, int] = {}
    sequence_id = 900
    while len(by_pid) < 2:
        sequence_id += 1
        result = client.infer("accumulate", int_input(1), sequence_id=sequence_id,
                              sequence_start=True)  # fmt: skip
        by_pid.setdefault(int(result.as_numpy("PID")[0][0]), sequence_id)
        assert sequence_id < 1000
    victim = next(w for w in stack.workers if w.pid in by_pid)
    doomed, survivor = by_pid[victim.pid], next(s for p, s in by_pid.items() if p != victim.pid)
    stack.kill(victim, signal.SIGKILL)

    def doomed_fails() -> InferenceServerException | None:
        try:
            client.infer("accumulate", int_input(1), sequence_id=doomed, client_timeout=10.0)
        except InferenceServerException as exc:
            return exc if exc.status() == "StatusCode.ABORTED" else None
        raise AssertionError("a request of a sequence whose worker died succeeded")

    error = wait_for(doomed_fails, timeout_s=30.0, what="the lost sequence to fail ABORTED")
    assert "start it again" in str(error.message())
    total = 1
    for value in (2, 3):  # the other worker's sequence goes on untouched
        result = client.infer("accumulate", int_input(value), sequence_id=survivor)
        total += value
        assert int(result.as_numpy("OUTPUT")[0][0]) == total
    # the lost sequence may start again, on the surviving worker
    result = client.infer("accumulate", int_input(5), sequence_id=doomed, sequence_start=True)
    assert int(result.as_numpy("OUTPUT")[0][0]) == 5


def _pids_of_open_sequences(stack: Stack, opened: list[int], count: int) -> set[int]:
    """Start ``count`` more sequences (left open, their ids added to ``opened``); the worker
    pids that answered them."""
    client = stack.client()
    pids = set()
    for _ in range(count):
        opened.append(10_000 + len(opened))
        result = client.infer("accumulate", int_input(1), sequence_id=opened[-1],
                              sequence_start=True)  # fmt: skip
        pids.add(int(result.as_numpy("PID")[0][0]))
    return pids
