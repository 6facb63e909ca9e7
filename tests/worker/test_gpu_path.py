"""The GPU path's bookkeeping on a CPU machine: streams never shared by live instances, warm-up
on the instance's own thread before the version is announced, instance_group honoured by the
model table, and BOOL bytes other than 0/1 refused by the codec."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fabric import errors
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb
from worker import gpu_warmup, models
from worker.codec import decode_request
from worker.devices import WorkerDevices
from worker.executor import STREAMS_PER_POOL, StreamLeases
from worker.loaders import LoadedModel, load_model
from worker.model_config import parse_model_config
from worker.models import ModelTable
from worker.repository import scan_model

from .test_runtime import Replies, batching, inbound, mlp_rows, request_bytes, write_model

# ---- streams -----------------------------------------------------------------------------------


class FakePool:
    """torch's per-priority stream pools: 32 streams each, handed out round-robin."""

    def __init__(self) -> None:
        self.next = {0: 0, -1: 0}

    def __call__(self, priority: int) -> tuple[int, int]:
        index = self.next[priority]
        self.next[priority] = (index + 1) % STREAMS_PER_POOL
        return (priority, index)


def stream_key(stream: tuple[int, int]) -> int:
    return stream[0] * 1000 + stream[1]


def test_live_instances_never_share_a_stream_after_many_reloads() -> None:
    leases = StreamLeases(FakePool(), stream_key)
    kept = [leases.acquire() for _ in range(3)]  # three instances that stay loaded
    for _ in range(200):  # reload another model over and over
        reloaded = leases.acquire()
        assert reloaded not in kept
        leases.release(reloaded)
    assert leases.live == 3


def test_both_priority_pools_are_used_before_any_stream_is_shared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leases = StreamLeases(FakePool(), stream_key)
    held = [leases.acquire() for _ in range(2 * STREAMS_PER_POOL)]
    assert len(set(held)) == 2 * STREAMS_PER_POOL
    assert "share a CUDA stream" not in caplog.text
    shared = leases.acquire()  # the 65th instance on one GPU
    assert shared in held and "share a CUDA stream" in caplog.text
    leases.release(shared)
    assert leases.live == 2 * STREAMS_PER_POOL  # still held by its first owner
    leases.release(shared)
    assert leases.live == 2 * STREAMS_PER_POOL - 1


# ---- warm-up on the instance's own thread --------------------------------------------------------


class Recorder:
    """Wraps a loaded model; records (thread name, rows) of every call."""

    def __init__(self, inner: LoadedModel) -> None:
        self.inner = inner
        self.spec, self.version, self.device = inner.spec, inner.version, inner.device
        self.shape_bound = inner.shape_bound
        self.calls: list[tuple[str, int]] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((threading.current_thread().name, int(inputs["X"].shape[0])))
        return self.inner.execute(inputs)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def threaded_warm_up(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Recorder]]:
    """Load models through a Recorder and warm every instance as a GPU one is warmed."""
    made: list[Recorder] = []

    def load(source: object, version: str, device: str) -> Recorder:
        made.append(Recorder(load_model(source, version, device)))  # type: ignore[arg-type]
        return made[-1]

    def prepare(model: LoadedModel) -> object:
        return lambda: gpu_warmup.warm_on_thread(model)

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.setattr(models, "on_gpu", lambda model: True)
    monkeypatch.setattr(models, "preparation", prepare)
    yield made


def test_gpu_instances_warm_up_on_their_own_threads_at_1_preferred_and_max(
    tmp_path: Path, threaded_warm_up: list[Recorder]
) -> None:
    write_model(tmp_path, "m", "mlp", batching((4,)) + "instance_group [ { count: 2 } ]")
    replies = Replies()
    table = ModelTable(tmp_path, "cpu", replies, min_credit=4)
    try:
        table.load_all()
        assert ("m", "1") in table.served  # announced only once warm
        assert len(threaded_warm_up) == 2
        for k, model in enumerate(threaded_warm_up):
            assert model.calls == [(f"model-m-v1-{k}", rows) for rows in (1, 4, 8)]
        served = table.served[("m", "1")]
        served.enter()
        served.inbox.put(inbound(1, request_bytes({"X": mlp_rows(2, 0)})))
        assert replies.wait_for(1)[0].status == errors.OK
    finally:
        table.stop_all()


def test_a_failed_warm_up_fails_the_load_and_stops_the_instances(
    tmp_path: Path, threaded_warm_up: list[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model: LoadedModel, log: bool = True) -> list[tuple[int, float]]:
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(gpu_warmup, "warm_on_thread", broken)
    write_model(tmp_path, "m", "mlp", batching())
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4)
    table.load_all()
    assert ("m", "1") not in table.served
    assert "warm-up failed: no kernel image" in table.load_errors["m:1"]
    assert not any(t.name.startswith("model-m-") for t in threading.enumerate())


# ---- instance_group in the model table -----------------------------------------------------------


def test_kind_gpu_on_a_cpu_worker_is_refused_by_name(tmp_path: Path) -> None:
    write_model(tmp_path, "m", "mlp", "instance_group [ { kind: KIND_GPU count: 1 } ]")
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4)
    table.load_all()
    assert table.served == {}
    assert "KIND_GPU, but this worker computes on the CPU" in table.load_errors["m:1"]


def test_a_model_pinned_to_another_workers_gpu_is_not_loaded_here(tmp_path: Path) -> None:
    write_model(tmp_path, "m", "mlp", "instance_group [ { kind: KIND_GPU gpus: [1] } ]")
    write_model(tmp_path, "c", "mlp", "instance_group [ { kind: KIND_CPU count: 2 } ]")
    # A worker owning GPU 0 of 2: "m" belongs to the worker on GPU 1; "c" runs on the CPU.
    table = ModelTable(tmp_path, WorkerDevices((0,), 2), Replies(), min_credit=4)
    try:
        table.load_all()
        assert set(table.served) == {("c", "1")}
        assert table.load_errors == {}
        assert [i.model.device for i in table.served[("c", "1")].instances] == ["cpu", "cpu"]
    finally:
        table.stop_all()


# ---- BOOL bytes --------------------------------------------------------------------------------

BOOL_CONFIG = """
name: "b"
max_batch_size: 4
input [ { name: "B" data_type: TYPE_BOOL dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_BOOL dims: [ 3 ] } ]
"""


def bool_request(raw: bytes, rows: int) -> bytes:
    request = pb.ModelInferRequest(model_name="b")
    request.inputs.add(name="B", datatype="BOOL", shape=[rows, 3])
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


def test_bool_bytes_other_than_0_and_1_are_refused_naming_the_input() -> None:
    spec = parse_model_config(BOOL_CONFIG, "b")
    ok = decode_request(bool_request(bytes([0, 1, 1, 0, 0, 1]), 2), spec)
    np.testing.assert_array_equal(ok.inputs["B"], [[False, True, True], [False, False, True]])
    for bad in (bytes([0, 2, 1]), bytes([255, 0, 0])):
        with pytest.raises(RequestError) as info:
            decode_request(bool_request(bad, 1), spec)
        assert info.value.code == errors.INVALID_ARGUMENT
        assert info.value.message == "input 'B': BOOL bytes must be 0 or 1"


def test_scan_model_reads_instance_groups_for_placement(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", "mlp", "instance_group [ { kind: KIND_CPU count: 3 } ]")
    group = scan_model(path).spec.config.instance_group[0]
    assert (group.kind, group.count) == (2, 3)
