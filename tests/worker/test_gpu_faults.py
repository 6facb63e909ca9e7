"""CUDA failures on a CPU machine: the exception types torch raises are injected into a batch.

An out-of-memory on a merged batch runs it again in halves and answers RESOURCE_EXHAUSTED only
to a lone request that still does not fit; a device-side assert poisons the device, after
which no batch runs, every request held is failed with the CUDA error's text and the worker
stops announcing and exits non-zero.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from fabric import errors, messages
from fabric.errors import RequestError
from fabric.protocol import MsgType
from worker.batch_step import BatchStep, CancelBoard
from worker.config import WorkerConfig
from worker.gpu_faults import DeviceHealth, Fault, classify, judge
from worker.loaders import LoadedModel, load_model
from worker.repository import scan_model
from worker.server import EXIT_DEVICE_LOST, WorkerServer
from worker.stats import ModelStats

from .test_runtime import Replies, batching, inbound, ragged_rows, request_bytes, write_model

DEVICE_ASSERT = (
    "CUDA error: device-side assert triggered\n"
    "Search for `cudaErrorAssert' in https://docs.nvidia.com/cuda/cuda-runtime-api/"
    "group__CUDART__TYPES.html for more information.\n"
    "CUDA kernel errors might be asynchronously reported at some other API call"
)
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"


def device_assert() -> Exception:
    return torch.AcceleratorError(DEVICE_ASSERT)


def out_of_memory() -> Exception:
    return torch.cuda.OutOfMemoryError(OOM)


def wrapped(exc: Exception) -> RequestError:
    """As ``TorchModel.execute`` raises it."""
    try:
        raise RequestError(errors.INTERNAL, f"model 'm' failed: {exc}") from exc
    except RequestError as outer:
        return outer


# ---- classification ---------------------------------------------------------------------------


def test_classify_reads_the_type_and_the_cause_chain() -> None:
    assert classify(out_of_memory()) is Fault.OUT_OF_MEMORY
    assert classify(wrapped(out_of_memory())) is Fault.OUT_OF_MEMORY
    assert classify(device_assert()) is Fault.POISONED
    assert classify(wrapped(device_assert())) is Fault.POISONED
    # Older torch and TorchScript raise plain RuntimeErrors carrying the CUDA text.
    assert classify(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert classify(RuntimeError("RuntimeError: CUDA out of memory.")) is Fault.OUT_OF_MEMORY
    assert classify(ValueError("bad row")) is Fault.NONE
    assert classify(RequestError(errors.INVALID_ARGUMENT, "device-side")) is Fault.NONE


def test_judge_maps_faults_to_answers() -> None:
    assert judge(out_of_memory(), "m", 3).split
    alone = judge(wrapped(out_of_memory()), "m", 1)
    assert (alone.split, alone.code) == (False, errors.RESOURCE_EXHAUSTED)
    assert alone.message == f"model 'm' ran out of device memory on this request alone: {OOM}"
    poisoned = judge(device_assert(), "m", 2)
    assert (poisoned.code, poisoned.poison) == (errors.INTERNAL, True)
    assert poisoned.message.endswith("restarts: CUDA error: device-side assert triggered")
    plain = judge(RequestError(errors.INVALID_ARGUMENT, "no"), "m", 2)
    assert (plain.split, plain.code, plain.message, plain.poison) == (
        False,
        errors.INVALID_ARGUMENT,
        "no",
        False,
    )
    assert judge(ValueError("x"), "m", 2).message == "model 'm' failed: x"


def test_device_health_is_poisoned_once_and_tells_its_listeners() -> None:
    health = DeviceHealth()
    heard: list[str | None] = []
    health.on_poison(lambda: heard.append(health.poisoned))
    assert health.poison("first")
    assert not health.poison("second")
    assert health.poisoned == "first" and heard == ["first"]


# ---- the batch step ----------------------------------------------------------------------------


class Faulty:
    """A real model whose batches raise what ``fault(rows)`` returns (None: run normally)."""

    shape_bound = False

    def __init__(self, inner: LoadedModel, fault: Callable[[int], Exception | None]) -> None:
        self.inner = inner
        self.spec, self.version, self.device = inner.spec, inner.version, inner.device
        self.fault = fault
        self.rows: list[int] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = int(inputs["X"].shape[0])
        self.rows.append(rows)
        exc = self.fault(rows)
        if exc is not None:
            raise wrapped(exc)
        return self.inner.execute(inputs)

    def close(self) -> None:
        self.inner.close()


class Run:
    def __init__(self, tmp_path: Path, fault: Callable[[int], Exception | None]) -> None:
        path = write_model(tmp_path, "m", "ragged", batching())
        self.model = Faulty(load_model(scan_model(path), 1, "cpu"), fault)
        self.replies = Replies()
        self.stats = ModelStats()
        self.health = DeviceHealth()
        self.step = BatchStep(
            self.model, "m-0", self.replies, self.stats, CancelBoard(), health=self.health
        )

    def batch(self, ids: list[int]) -> None:
        for rid in ids:
            x = ragged_rows(1 + rid % 3, 3, seed=rid)
            self.step.take(inbound(rid, request_bytes({"X": x})))
        batch, _ = self.step.next_batch(lambda: None)
        assert sorted(w.item.inbound.header.request_id for w in batch) == sorted(ids)
        self.step.run(batch)

    def statuses(self) -> dict[int, str]:
        return {i: r.status for i, r in self.replies.by_id().items()}


def test_oom_on_a_merged_batch_runs_it_in_halves(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda rows: out_of_memory() if rows > 3 else None)
    run.batch([0, 1, 2, 3])  # rows 1, 2, 3, 1
    assert run.statuses() == dict.fromkeys(range(4), errors.OK)
    for rid, reply in run.replies.by_id().items():
        x = ragged_rows(1 + rid % 3, 3, seed=rid)
        np.testing.assert_array_equal(reply.outputs()["Y"], np.cumsum(x, axis=1) * 3)
    # 7 rows fail; [0, 1] fits; [2, 3] fails and runs as [2] and [3].
    assert run.model.rows == [7, 3, 4, 3, 1]
    assert (run.stats.success.count, run.stats.inference_count) == (4, 7)
    assert run.health.poisoned is None


def test_a_lone_request_that_runs_out_of_memory_gets_resource_exhausted(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda rows: out_of_memory() if rows >= 3 else None)
    run.batch([1, 2, 3])  # rows 2, 3, 1: [1] fits, [2, 3] does not, nor [2] alone
    statuses = run.statuses()
    assert statuses == {1: errors.OK, 2: errors.RESOURCE_EXHAUSTED, 3: errors.OK}
    message = run.replies.by_id()[2].message
    assert message.startswith("model 'm' ran out of device memory on this request alone")
    assert run.health.poisoned is None


def test_a_device_assert_poisons_the_device_and_stops_every_later_batch(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda rows: device_assert() if not poisoned_once else None)
    poisoned_once = False
    run.batch([1, 2])
    poisoned_once = True  # the model would now run fine: the step must not even try
    calls = len(run.model.rows)
    run.batch([3])
    assert len(run.model.rows) == calls
    replies = run.replies.by_id()
    assert {r.status for r in replies.values()} == {errors.INTERNAL}
    assert run.health.poisoned is not None
    assert "device-side assert triggered" in run.health.poisoned
    assert replies[3].message == replies[1].message == run.health.poisoned
    assert run.stats.to_proto("m", "1").inference_stats.fail.count == 3


# ---- the worker process ----------------------------------------------------------------------


def test_a_poisoned_worker_stops_announcing_answers_and_exits_non_zero(tmp_path: Path) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    write_model(tmp_path, "m", "ragged", batching())
    server = WorkerServer(
        WorkerConfig(brokers=(f"tcp://127.0.0.1:{port}",), model_repository=str(tmp_path))
    )
    server.load_repository()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert router.poll(5000), "the worker never announced itself"
        router.recv_multipart()
        server.health.poison("CUDA error: device-side assert triggered")
        thread.join(10)
        assert not thread.is_alive(), "the poisoned worker kept serving"
        assert server.exit_code == EXIT_DEVICE_LOST
        announced = []
        while router.poll(100):
            frames = router.recv_multipart()[1:]
            for msg in messages.iter_messages(frames, routed=False):
                if isinstance(msg, messages.Message) and msg.type is MsgType.READY:
                    announced.append(msg.header.models)
        assert announced and announced[-1] == [], "it still announced models"
    finally:
        server.request_stop()
        thread.join(5)
        ctx.destroy(linger=0)


def test_main_refuses_auto_on_a_gpu_host_without_cuda_torch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import worker.__main__ as worker_main
    import worker.devices as devices

    if torch.cuda.is_available():
        pytest.skip("this host's torch can use CUDA")
    monkeypatch.setattr(devices, "host_has_nvidia_gpu", lambda: True)
    code = worker_main.main(["--model-repository", str(tmp_path), "--device", "auto"])
    assert code == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if "serve-worker: error" in line
    ]  # the log lines before it (CURVE off ...) go to stderr too
    assert len(errors) == 1
    assert errors[0].startswith("serve-worker: error: --device auto: this host has an NVIDIA GPU")
