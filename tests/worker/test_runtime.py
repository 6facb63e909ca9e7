"""A real ``ModelInstance`` driven like the worker's I/O thread drives it: ``Inbound`` items on
its queue, replies through the ``send_reply`` callback. Batching must never change a result,
every request gets exactly one reply, and one request's failure stays with that request (or,
for a model error, that batch).

The helpers here (reply collector, request builders, the two test models) are shared by
``test_models.py`` and ``test_cuda.py``.
"""

from __future__ import annotations

import queue
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from fabric import errors
from fabric.deadlines import NO_DEADLINE
from fabric.protocol import PeerId, RequestHeader
from protos import grpc_service_pb2 as pb
from worker.loaders import LoadedModel, PythonModel, load_model
from worker.repository import scan_model
from worker.runtime import Cancel, Inbound, ModelInstance
from worker.stats import ModelStats

FRONTEND: PeerId = b"frontend-1"
WAIT_S = 10.0

# ---- replies and requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    frontend: PeerId
    request_id: int
    status: str
    message: str
    body: bytes | None

    def outputs(self) -> dict[str, np.ndarray]:
        assert self.body is not None, f"{self.status}: {self.message}"
        return decode_response(self.body)


class Replies:
    """A ``send_reply`` callback recording every reply; tests wait on it with timeouts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Reply] = []

    def __call__(
        self, frontend: PeerId, request_id: int, status: str, message: str, body: bytes | None
    ) -> None:
        with self._cond:
            self.items.append(Reply(frontend, request_id, status, message, body))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[Reply]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout_s):
                raise AssertionError(f"{len(self.items)} replies after {timeout_s}s, want {count}")
            return list(self.items)

    def by_id(self) -> dict[int, Reply]:
        """Replies by request id, checking that no request got two."""
        with self._cond:
            ids = [r.request_id for r in self.items]
            assert len(ids) == len(set(ids)), f"a request got more than one reply: {sorted(ids)}"
            return {r.request_id: r for r in self.items}

    def __len__(self) -> int:
        with self._cond:
            return len(self.items)


DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64}


def request_bytes(inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = ()) -> bytes:
    """A serialized ``ModelInferRequest`` with raw inputs, as a client sends it."""
    request = pb.ModelInferRequest(model_name="m", id="r")
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def inbound(
    request_id: int, payload: bytes, deadline_ns: int = NO_DEADLINE, model: str = "m"
) -> Inbound:
    return Inbound(RequestHeader(request_id, model, "", deadline_ns), FRONTEND, payload, now())


def now() -> float:
    return time.monotonic()


def decode_response(body: bytes) -> dict[str, np.ndarray]:
    response = pb.ModelInferResponse.FromString(body)
    return {
        out.name: np.frombuffer(raw, dtype=NUMPY_TYPES[out.datatype]).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    give_up = time.monotonic() + timeout_s
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"condition not met after {timeout_s}s")
        tick.wait(0.002)


def thread_alive(name: str) -> bool:
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


# ---- the test models ------------------------------------------------------------------------

MLP_CONFIG = """
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""

RAGGED_CONFIG = """
max_batch_size: 8
input [ { name: "X" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_INT64 dims: [ -1 ] },
         { name: "S" data_type: TYPE_INT64 dims: [ 1 ] } ]
"""

POISON = -999

# Per row: Y = 3 * cumsum(X), S = sum(X): integers, so batched and alone must agree bit for bit.
# It records each batch's shape and thread, can be held at a gate, and raises on POISON.
RAGGED_MODEL = f"""
import threading

import numpy as np

CALLS = []  # (thread name, input shape), one per batch
GATE = threading.Event()
GATE.set()
ENTERED = threading.Semaphore(0)


class Model:
    def execute(self, inputs):
        x = inputs["X"]
        CALLS.append((threading.current_thread().name, x.shape))
        ENTERED.release()
        if not GATE.wait(10):
            raise TimeoutError("gate never opened")
        if (x == {POISON}).any():
            raise ValueError("poisoned row")
        return {{"Y": np.cumsum(x, axis=1) * 3, "S": x.sum(axis=1, keepdims=True)}}
"""


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


def batching(preferred: tuple[int, ...] = (), delay_us: int = 0) -> str:
    sizes = "".join(f" preferred_batch_size: {p}" for p in preferred)
    return f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us}{sizes} }}\n"


def write_model(root: Path, name: str, kind: str, extra_config: str = "", version: int = 1) -> Path:
    """``root/name`` holding a config and version ``version`` of the "mlp" or "ragged" model."""
    path = root / name
    (path / str(version)).mkdir(parents=True, exist_ok=True)
    config = MLP_CONFIG if kind == "mlp" else RAGGED_CONFIG
    (path / "config.pbtxt").write_text(config + extra_config)
    if kind == "mlp":
        torch.manual_seed(version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(Mlp().eval()), str(path / str(version) / "model.pt"))
    else:
        (path / str(version) / "model.py").write_text(textwrap.dedent(RAGGED_MODEL))
    return path


def model_module(model: LoadedModel) -> ModuleType:
    """The imported ``model.py`` of a Python model, to reach its CALLS, GATE and ENTERED."""
    assert isinstance(model, PythonModel)
    return sys.modules[type(model._instance).__module__]


class Probe:
    """Watches and holds a ragged model: the batches it ran, a gate to keep one running."""

    def __init__(self, model: LoadedModel) -> None:
        self.module = model_module(model)
        self.reset()

    def reset(self) -> None:
        self.module.GATE.set()
        self.module.CALLS.clear()
        while self.module.ENTERED.acquire(blocking=False):
            pass

    def close_gate(self) -> None:
        self.module.GATE.clear()

    def open_gate(self) -> None:
        self.module.GATE.set()

    def wait_entered(self, timeout_s: float = WAIT_S) -> bool:
        """Wait for a batch to reach the model."""
        return bool(self.module.ENTERED.acquire(timeout=timeout_s))

    @property
    def calls(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self.module.CALLS)

    @property
    def rows(self) -> list[int]:
        return [shape[0] for _, shape in self.calls]


def ragged_rows(rows: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-50, 50, size=(rows, width), dtype=np.int64)


def mlp_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4), dtype=np.float32)


class Harness:
    """One ``ModelInstance`` on its own queue, with its replies and statistics."""

    def __init__(self, model: LoadedModel, instances: int = 1) -> None:
        self.model = model
        self.replies = Replies()
        self.stats = ModelStats()
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.instances = [
            ModelInstance(model, i, self.replies, self.stats, self.inbox) for i in range(instances)
        ]
        for inst in self.instances:  # as ModelTable does for a version's instances
            inst.shares_inbox = instances > 1
        self.started = False

    def start(self) -> Harness:
        for inst in self.instances:
            inst.start()
        self.started = True
        return self

    def put(self, item: object) -> None:
        self.inbox.put(item)

    def stop(self) -> None:
        """Stop and join every instance; afterwards statistics and replies are final."""
        if not self.started:
            return
        for inst in self.instances:
            inst.stop()
        for inst in self.instances:
            inst.join(WAIT_S)
        alive = [inst.name for inst in self.instances if thread_alive(inst.name)]
        assert not alive, f"instances still running after stop: {alive}"
        self.started = False


@pytest.fixture
def ragged(tmp_path: Path) -> Iterator[tuple[LoadedModel, Probe]]:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", batching())), 1, "cpu")
    probe = Probe(model)
    yield model, probe
    probe.open_gate()


@pytest.fixture
def harness(ragged: tuple[LoadedModel, Probe]) -> Iterator[Harness]:
    h = Harness(ragged[0])
    yield h
    ragged[1].open_gate()
    h.stop()


# ---- batching never changes a result (property) ---------------------------------------------


class ModelCache:
    """Loaded models by (kind, preferred sizes, delay), one repository for the whole module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[tuple[str, tuple[int, ...], int], LoadedModel] = {}
        self.references: dict[str, LoadedModel] = {}

    def get(self, kind: str, preferred: tuple[int, ...], delay_us: int) -> LoadedModel:
        key = (kind, preferred, delay_us)
        if key not in self.models:
            name = f"{kind}_{'_'.join(map(str, preferred))}_{delay_us}"
            path = write_model(self.root, name, kind, batching(preferred, delay_us))
            self.models[key] = load_model(scan_model(path), 1, "cpu")
        return self.models[key]

    def reference(self, kind: str) -> LoadedModel:
        """A separate copy of the model, called on one request at a time."""
        if kind not in self.references:
            path = write_model(self.root, f"{kind}_reference", kind)
            self.references[kind] = load_model(scan_model(path), 1, "cpu")
        return self.references[kind]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(tmp_path_factory.mktemp("runtime-models"))


@dataclass(frozen=True)
class Arrival:
    rows: int
    width: int  # of the -1 dim (ragged model)
    gap_s: float  # before it arrives
    outputs: tuple[str, ...]  # asked for; () = all


@dataclass(frozen=True)
class Workload:
    kind: str  # "mlp" or "ragged"
    preferred: tuple[int, ...]
    delay_us: int
    queued_before_start: bool  # all arrive before the instance looks: the biggest batches
    arrivals: list[Arrival]
    seed: int


workloads = st.builds(
    Workload,
    kind=st.sampled_from(["mlp", "ragged"]),
    preferred=st.sets(st.sampled_from([2, 3, 4, 8]), max_size=2).map(lambda s: tuple(sorted(s))),
    delay_us=st.sampled_from([0, 500, 3000]),
    queued_before_start=st.booleans(),
    arrivals=st.lists(
        st.builds(
            Arrival,
            rows=st.integers(1, 8),
            width=st.integers(1, 3),
            gap_s=st.sampled_from([0.0, 0.0, 0.0, 0.0005, 0.002]),
            outputs=st.sampled_from([(), ("S",), ("Y",), ("Y", "S")]),
        ),
        min_size=1,
        max_size=14,
    ),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(workload=workloads)
def test_batched_results_equal_each_request_run_alone(
    model_cache: ModelCache, workload: Workload
) -> None:
    kind = workload.kind
    model = model_cache.get(kind, workload.preferred, workload.delay_us)
    reference = model_cache.reference(kind)
    probe = Probe(model) if kind == "ragged" else None

    h = Harness(model)
    sent: dict[int, tuple[dict[str, np.ndarray], tuple[str, ...]]] = {}
    if not workload.queued_before_start:
        h.start()
    pause = threading.Event()
    for rid, arrival in enumerate(workload.arrivals, start=1):
        seed = workload.seed + rid
        outputs: tuple[str, ...] = ()
        if kind == "mlp":
            inputs = {"X": mlp_rows(arrival.rows, seed)}
        else:
            inputs = {"X": ragged_rows(arrival.rows, arrival.width, seed)}
            outputs = arrival.outputs
        sent[rid] = (inputs, outputs)
        if arrival.gap_s and h.started:
            pause.wait(arrival.gap_s)  # the arrival gap is the input being tested, not a wait
        h.put(inbound(rid, request_bytes(inputs, outputs)))
    if not h.started:
        h.start()
    h.replies.wait_for(len(sent))
    h.stop()

    replies = h.replies.by_id()
    assert sorted(replies) == sorted(sent)
    for rid, (inputs, outputs) in sent.items():
        reply = replies[rid]
        assert reply.status == errors.OK, reply.message
        assert reply.frontend == FRONTEND
        got = reply.outputs()
        alone = reference.execute(inputs)
        assert list(got) == (list(outputs) if outputs else list(alone))
        for name, value in got.items():
            if kind == "mlp":
                np.testing.assert_allclose(value, alone[name], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(value, alone[name])

    total_rows = sum(a.rows for a in workload.arrivals)
    event(f"batched: {h.stats.execution_count < len(sent)}")
    stats = h.stats
    assert stats.success.count == len(sent)
    assert stats.fail.count == 0
    assert stats.inference_count == total_rows
    assert sum(size * b.compute_infer.count for size, b in stats.batches.items()) == total_rows
    assert sum(b.compute_infer.count for b in stats.batches.values()) == stats.execution_count
    assert all(1 <= size <= 8 for size in stats.batches)
    if probe is not None:
        # Every batch the model saw was one 2-D array (one width) of at most max_batch_size rows.
        assert len(probe.calls) == stats.execution_count
        assert sum(probe.rows) == total_rows
        assert all(len(shape) == 2 and 1 <= shape[0] <= 8 for _, shape in probe.calls)


# ---- how requests are grouped ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("preferred", "expected_rows"),
    [((), [8, 2]), ((4,), [4, 4, 2]), ((2, 8), [8, 2]), ((3,), [3, 3, 3, 1])],
)
def test_queued_requests_batch_up_to_max_or_preferred_size(
    tmp_path: Path, preferred: tuple[int, ...], expected_rows: list[int]
) -> None:
    path = write_model(tmp_path, "m", "ragged", batching(preferred, delay_us=100_000))
    model = load_model(scan_model(path), 1, "cpu")
    probe = Probe(model)
    h = Harness(model)
    for rid in range(10):
        h.put(inbound(rid, request_bytes({"X": ragged_rows(1, 2, rid)})))
    h.start()
    h.replies.wait_for(10)
    h.stop()
    assert probe.rows == expected_rows
    assert {size: b.compute_infer.count for size, b in h.stats.batches.items()} == {
        r: expected_rows.count(r) for r in expected_rows
    }


def test_requests_of_different_shapes_never_share_a_batch(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    widths = [2, 3, 2, 3, 1, 2]
    for rid, width in enumerate(widths):
        harness.put(inbound(rid, request_bytes({"X": ragged_rows(1, width, rid)})))
    harness.start()
    replies = harness.replies.wait_for(len(widths))
    assert all(r.status == errors.OK for r in replies)
    assert sorted(shape for _, shape in probe.calls) == [(1, 1), (2, 3), (3, 2)]
    for r in replies:
        x = ragged_rows(1, widths[r.request_id], r.request_id)
        np.testing.assert_array_equal(r.outputs()["Y"], np.cumsum(x, axis=1) * 3)


def test_without_dynamic_batching_each_request_runs_alone(tmp_path: Path) -> None:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged")), 1, "cpu")
    probe = Probe(model)
    h = Harness(model)
    for rid in range(4):
        h.put(inbound(rid, request_bytes({"X": ragged_rows(2, 2, rid)})))
    h.start()
    h.replies.wait_for(4)
    h.stop()
    assert probe.rows == [2, 2, 2, 2]
    assert h.stats.execution_count == 4


# ---- deadlines and cancellation ---------------------------------------------------------------


def test_deadline_passed_on_arrival_is_not_executed(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    harness.start()
    harness.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)}), time.time_ns() - 1))
    harness.put(inbound(2, request_bytes({"X": ragged_rows(1, 2, 2)})))
    harness.replies.wait_for(2)
    replies = harness.replies.by_id()
    assert replies[1].status == errors.DEADLINE_EXCEEDED
    assert replies[1].body is None
    assert replies[2].status == errors.OK
    assert probe.rows == [1]
    harness.stop()
    assert harness.stats.expired == 1
    assert harness.stats.success.count == 1


def test_deadline_passing_while_queued_behind_a_batch(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    probe.close_gate()
    harness.start()
    harness.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)})))
    assert probe.wait_entered()
    deadline_ns = time.time_ns() + 20_000_000
    harness.put(inbound(2, request_bytes({"X": ragged_rows(1, 2, 2)}), deadline_ns))
    wait_until(lambda: time.time_ns() > deadline_ns)
    probe.open_gate()
    harness.replies.wait_for(2)
    replies = harness.replies.by_id()
    assert replies[1].status == errors.OK
    assert replies[2].status == errors.DEADLINE_EXCEEDED
    assert probe.rows == [1]
    harness.stop()
    assert harness.stats.expired == 1


def test_deadline_passing_in_the_batcher_behind_an_earlier_batch(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    deadline_ns = time.time_ns() + 100_000_000
    # Different widths: both are taken from the queue together but cannot share a batch.
    harness.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)})))
    harness.put(inbound(2, request_bytes({"X": ragged_rows(1, 3, 2)}), deadline_ns))
    probe.close_gate()
    harness.start()
    assert probe.wait_entered()
    wait_until(lambda: time.time_ns() > deadline_ns)
    probe.open_gate()
    harness.replies.wait_for(2)
    replies = harness.replies.by_id()
    assert replies[1].status == errors.OK
    assert replies[2].status == errors.DEADLINE_EXCEEDED, replies[2].status
    assert probe.rows == [1]


def test_cancel_before_the_batch_means_no_execution(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    probe.close_gate()
    harness.start()
    harness.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)})))
    assert probe.wait_entered()
    harness.put(inbound(2, request_bytes({"X": ragged_rows(2, 2, 2)})))
    harness.put(inbound(3, request_bytes({"X": ragged_rows(3, 2, 3)})))
    harness.put(Cancel(FRONTEND, 2))
    harness.put(Cancel(b"another-frontend", 3))  # same id from another frontend: not this one
    probe.open_gate()
    replies = harness.replies.wait_for(2)
    harness.stop()
    assert {r.request_id: r.status for r in replies if r.status == errors.OK} == {1: "OK", 3: "OK"}
    assert probe.rows == [1, 3]
    assert harness.stats.cancelled == 1
    assert harness.stats.success.count == 2


def test_cancelled_request_still_gets_exactly_one_reply(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    probe.close_gate()
    harness.start()
    harness.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)})))
    assert probe.wait_entered()
    harness.put(inbound(2, request_bytes({"X": ragged_rows(1, 2, 2)})))
    harness.put(Cancel(FRONTEND, 2))
    probe.open_gate()
    harness.replies.wait_for(1)
    harness.stop()
    replies = harness.replies.by_id()
    assert 2 in replies, "no reply for the cancelled request"
    assert replies[2].status == errors.CANCELLED


# ---- failures stay with their request (or batch) -----------------------------------------------


def test_model_error_fails_its_whole_batch_and_the_next_batch_succeeds(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    poisoned = ragged_rows(1, 2, 2)
    poisoned[0, 1] = POISON
    batch = {1: ragged_rows(2, 2, 1), 2: poisoned, 3: ragged_rows(1, 2, 3)}
    for rid, x in batch.items():
        harness.put(inbound(rid, request_bytes({"X": x})))
    harness.start()
    replies = harness.replies.wait_for(3)
    assert probe.rows == [4]
    for r in replies:
        assert r.status == errors.INTERNAL
        assert r.body is None
        assert "model 'm' failed: poisoned row" in r.message
    harness.put(inbound(4, request_bytes({"X": ragged_rows(2, 2, 4)})))
    harness.replies.wait_for(4)
    assert harness.replies.by_id()[4].status == errors.OK
    harness.stop()
    assert harness.stats.fail.count == 3
    assert harness.stats.success.count == 1
    assert harness.stats.execution_count == 1  # failed batches count as failures only


INVALID = {
    "malformed bytes": b"\xff\xff\xff",
    "wrong datatype": request_bytes({"X": np.zeros((1, 2), dtype=np.float32)}),
    "too many rows": request_bytes({"X": np.zeros((9, 2), dtype=np.int64)}),
    "wrong rank": request_bytes({"X": np.zeros((1, 2, 2), dtype=np.int64)}),
    "unknown input": pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="Q", datatype="INT64", shape=[1])],
        raw_input_contents=[b"\0" * 8],
    ).SerializeToString(),
    "unknown output": request_bytes({"X": np.zeros((1, 2), dtype=np.int64)}, ("NOPE",)),
}


def test_invalid_requests_fail_alone_while_the_others_batch(
    harness: Harness, ragged: tuple[LoadedModel, Probe]
) -> None:
    _, probe = ragged
    good = {rid: ragged_rows(rid, 2, rid) for rid in (1, 2, 3)}
    harness.put(inbound(1, request_bytes({"X": good[1]})))
    for rid, payload in enumerate(INVALID.values(), start=100):
        harness.put(inbound(rid, payload))
    harness.put(inbound(2, request_bytes({"X": good[2]})))
    harness.put(inbound(3, request_bytes({"X": good[3]})))
    harness.start()
    harness.replies.wait_for(3 + len(INVALID))
    replies = harness.replies.by_id()
    for rid, what in enumerate(INVALID, start=100):
        assert replies[rid].status == errors.INVALID_ARGUMENT, what
        assert replies[rid].message, what
    for rid, x in good.items():
        assert replies[rid].status == errors.OK
        np.testing.assert_array_equal(replies[rid].outputs()["S"], x.sum(axis=1, keepdims=True))
    assert probe.rows == [6]  # the valid ones still ran as one batch
    harness.stop()
    assert harness.stats.success.count == 3
    assert harness.stats.fail.count == 0  # rejected requests never reached the model


# ---- several instances on one queue -----------------------------------------------------------


def test_every_instance_sharing_a_queue_stops(tmp_path: Path) -> None:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", batching())), 1, "cpu")
    h = Harness(model, instances=2)
    for inst in h.instances:  # both stops are queued before either thread looks
        inst.stop()
    h.instances[0].start()
    h.instances[0].join(WAIT_S)
    h.instances[1].start()
    h.instances[1].join(2.0)
    assert not thread_alive(h.instances[0].name)
    assert not thread_alive(h.instances[1].name), "the first instance took both stops"


def test_two_instances_share_the_work_of_one_queue(tmp_path: Path) -> None:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", batching())), 1, "cpu")
    probe = Probe(model)
    h = Harness(model, instances=2).start()
    try:
        probe.close_gate()
        h.put(inbound(1, request_bytes({"X": ragged_rows(1, 2, 1)})))
        assert probe.wait_entered()
        h.put(inbound(2, request_bytes({"X": ragged_rows(1, 2, 2)})))
        assert probe.wait_entered(), "the idle instance did not take the second request"
        assert len({thread for thread, _ in probe.calls}) == 2
        probe.open_gate()
        assert all(r.status == errors.OK for r in h.replies.wait_for(2))
    finally:
        probe.open_gate()
        h.stop()


def test_a_burst_is_shared_between_instances(tmp_path: Path) -> None:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", batching())), 1, "cpu")
    probe = Probe(model)
    h = Harness(model, instances=2)
    try:
        probe.close_gate()
        for rid, width in enumerate([1, 2, 3]):  # three batches' worth: widths never mix
            h.put(inbound(rid, request_bytes({"X": ragged_rows(1, width, rid)})))
        h.instances[0].start()  # the other instance was busy when the burst came in
        assert probe.wait_entered()
        h.instances[1].start()
        h.started = True
        assert probe.wait_entered(1.0), "the second batch waits for the first instance"
    finally:
        probe.open_gate()
        h.replies.wait_for(3)
        h.stop()
