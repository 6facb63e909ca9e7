"""The CUDA path on a real GPU (``make bench-gpu`` runs these with FABRICSERVE_REQUIRE_GPU=1,
where a skip is a failure: see tests/conftest.py).

The models here sleep on the device (``torch.cuda._sleep``, a spin kernel on the current stream)
before they compute, so that a missing synchronisation reads outputs that are not written yet
on every run, not once in a while; the same kernels show whether two instances overlap.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fabric import errors
from worker.batch_step import BatchStep, CancelBoard
from worker.devices import WorkerDevices
from worker.gpu_faults import DeviceHealth
from worker.loaders import TorchModel, load_model
from worker.model_config import ModelSpec, parse_model_config
from worker.models import ModelTable
from worker.repository import scan_model
from worker.stats import ModelStats

from ..worker.test_runtime import (
    Replies,
    batching,
    inbound,
    mlp_rows,
    request_bytes,
    write_model,
)

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA (torch.cuda.is_available())")
SLEEP_CYCLES = 4_000_000  # ~2 ms at 2 GHz: far longer than any copy of these small tensors
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.gpu, needs_cuda]


def spec_of(text: str) -> ModelSpec:
    return parse_model_config(text, "m")


MLP_SPEC = """
name: "m"
max_batch_size: 64
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def slow_linear(device: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], np.ndarray]:
    """A module that sleeps on the device, then multiplies by a fixed matrix."""
    weight = np.random.default_rng(7).standard_normal((4, 3), dtype=np.float32)
    w = torch.from_numpy(weight).to(device)

    def module(x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(SLEEP_CYCLES)
        return torch.tanh(x @ w)

    return module, weight


def expected_linear(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return np.tanh(x @ weight)


# ---- synchronisation and overlap ------------------------------------------------------------


def test_a_slow_device_model_never_returns_unwritten_outputs() -> None:
    module, weight = slow_linear("cuda:0")
    model = TorchModel(spec_of(MLP_SPEC), "1", "cuda:0", module)
    kept = []
    for step, rows in enumerate([1, 64, 3, 17, 64, 2] * 5):
        x = mlp_rows(rows, step)
        out = model.execute({"X": x})["Y"]
        np.testing.assert_allclose(out, expected_linear(x, weight), rtol=1e-4, atol=1e-4)
        kept.append((out, x))
    for out, x in kept:  # later batches never overwrote earlier results
        np.testing.assert_allclose(out, expected_linear(x, weight), rtol=1e-4, atol=1e-4)
    model.close()


def test_two_instances_overlap_on_their_own_streams() -> None:
    batches = 50
    models = [TorchModel(spec_of(MLP_SPEC), "1", "cuda:0", slow_linear("cuda:0")[0])
              for _ in range(2)]  # fmt: skip
    x = mlp_rows(8, 0)
    for m in models:
        m.execute({"X": x})  # first-call costs out of the timing

    def run(model: TorchModel) -> None:
        for _ in range(batches):
            model.execute({"X": x})

    started = time.perf_counter()
    run(models[0])
    alone_s = time.perf_counter() - started
    threads = [threading.Thread(target=run, args=(m,), name=f"inst-{i}")
               for i, m in enumerate(models)]  # fmt: skip
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both_s = time.perf_counter() - started
    # Serialised, two instances take twice as long as one; overlapped, about as long.
    assert both_s < 1.5 * alone_s, f"one instance {alone_s:.3f}s, two {both_s:.3f}s"
    for m in models:
        m.close()


# ---- datatypes -------------------------------------------------------------------------------

TYPES_SPEC = """
name: "m"
max_batch_size: 8
input [ { name: "H" data_type: TYPE_FP16 dims: [ 3 ] },
        { name: "I" data_type: TYPE_INT64 dims: [ 3 ] },
        { name: "B" data_type: TYPE_BOOL dims: [ 3 ] } ]
output [ { name: "H2" data_type: TYPE_FP16 dims: [ 3 ] },
         { name: "I2" data_type: TYPE_INT64 dims: [ 3 ] },
         { name: "B2" data_type: TYPE_BOOL dims: [ 3 ] } ]
"""


def test_fp16_int64_and_bool_round_trip_through_the_device() -> None:
    def module(h: torch.Tensor, i: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        torch.cuda._sleep(SLEEP_CYCLES)
        assert h.is_cuda and i.is_cuda and b.is_cuda
        return h * 2, i + (1 << 40), ~b

    model = TorchModel(spec_of(TYPES_SPEC), "1", "cuda:0", module)
    rng = np.random.default_rng(1)
    for rows in (1, 8, 5):
        h = rng.standard_normal((rows, 3)).astype(np.float16)
        i = rng.integers(-(1 << 50), 1 << 50, size=(rows, 3), dtype=np.int64)
        b = rng.integers(0, 2, size=(rows, 3)).astype(bool)
        out = model.execute({"H": h, "I": i, "B": b})
        assert out["H2"].dtype == np.float16 and out["I2"].dtype == np.int64
        np.testing.assert_array_equal(out["H2"], h * np.float16(2))
        np.testing.assert_array_equal(out["I2"], i + (1 << 40))
        np.testing.assert_array_equal(out["B2"], ~b)
    model.close()


# ---- formats ----------------------------------------------------------------------------------


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 3))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


def test_a_pt2_program_on_the_gpu_equals_the_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        Mlp().eval(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}}
    )
    path = tmp_path / "m"
    (path / "1").mkdir(parents=True)
    (path / "config.pbtxt").write_text(MLP_SPEC)
    torch.export.save(program, str(path / "1" / "model.pt2"))
    cpu = load_model(scan_model(path), 1, "cpu")
    gpu = load_model(scan_model(path), 1, "cuda:0")
    for rows in (1, 64, 7):
        x = mlp_rows(rows, rows)
        np.testing.assert_allclose(
            gpu.execute({"X": x})["Y"], cpu.execute({"X": x})["Y"], rtol=1e-4, atol=1e-5
        )
    gpu.close()


# ---- padding and the batch step on the device --------------------------------------------------

PADDED_SPEC = """
name: "m"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 0 }
parameters { key: "pad_to_longest" value { string_value: "true" } }
"""


class Step:
    def __init__(self, spec: ModelSpec, module: Callable[..., object], device: str) -> None:
        self.model = TorchModel(spec, "1", device, module)
        self.replies = Replies()
        self.health = DeviceHealth()
        self.step = BatchStep(
            self.model, "m-0", self.replies, ModelStats(), CancelBoard(), health=self.health
        )

    def run(self, requests: dict[int, np.ndarray]) -> None:
        for rid, x in requests.items():
            self.step.take(inbound(rid, request_bytes({"X": x})))
        while True:
            batch, _ = self.step.next_batch(lambda: None)
            if not batch:
                return
            self.step.run(batch)


def test_padded_batches_on_the_device_answer_each_request_with_its_own_length() -> None:
    def module(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.cuda._sleep(SLEEP_CYCLES)
        return x * 2, x.sum(dim=1, keepdim=True)

    s = Step(spec_of(PADDED_SPEC), module, "cuda:0")
    sent = {rid: np.arange(rid * 2, dtype=np.float32).reshape(1, -1) + rid for rid in (1, 2, 3)}
    s.run(sent)
    got = s.replies.by_id()
    for rid, x in sent.items():
        out = got[rid].outputs()
        np.testing.assert_array_equal(out["DOUBLED"], x * 2)
        np.testing.assert_array_equal(out["TOTAL"], x.sum(axis=1, keepdims=True))


# ---- out of memory ------------------------------------------------------------------------------


def test_a_merged_batch_that_runs_out_of_memory_is_split() -> None:
    total = torch.cuda.get_device_properties(0).total_memory

    def module(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:  # more than the device has: a real CUDA OOM
            torch.empty(2 * total, dtype=torch.uint8, device=x.device)
        return x[:, :3] * 2

    spec = MLP_SPEC.replace("64", "8") + "dynamic_batching { max_queue_delay_microseconds: 0 }"
    s = Step(spec_of(spec), module, "cuda:0")
    sent = {rid: mlp_rows(1, rid) for rid in range(1, 5)}
    s.run(sent)
    got = s.replies.by_id()
    assert {r.status for r in got.values()} == {errors.OK}
    for rid, x in sent.items():
        np.testing.assert_array_equal(got[rid].outputs()["Y"], x[:, :3] * 2)
    s.run({9: mlp_rows(3, 9)})  # a lone request over the limit
    alone = s.replies.by_id()[9]
    assert alone.status == errors.RESOURCE_EXHAUSTED
    assert "ran out of device memory on this request alone" in alone.message
    assert s.health.poisoned is None
    s.run({10: mlp_rows(2, 10)})  # the device is fine afterwards
    assert s.replies.by_id()[10].status == errors.OK


# ---- a device-side assert, in a process of its own (it poisons the CUDA context) -------------

ASSERT_SCRIPT = """
import json, os, sys
import numpy as np, torch
from worker.gpu_faults import Fault, classify, judge
from worker.loaders import TorchModel
from worker.model_config import parse_model_config

spec = parse_model_config('''
name: "m"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_INT64 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, 4 ] } ]
''', "m")
table = torch.zeros(10, 4, device="cuda:0")

def module(x):
    return torch.nn.functional.embedding(x, table)

model = TorchModel(spec, "1", "cuda:0", module)
faults = []
for rows in ([[1, 2]], [[1, 99]], [[1, 2]]):  # in range, out of range, in range again
    try:
        model.execute({"X": np.array(rows, dtype=np.int64)})
        faults.append("ok")
    except Exception as exc:
        faults.append(classify(exc).value)
        verdict = judge(exc, "m", 1)
model.close()  # must not raise on the poisoned context: the worker closes its models on exit
print(json.dumps({"faults": faults, "message": verdict.message, "poison": verdict.poison}))
sys.stdout.flush()
os._exit(0)  # torch's teardown may abort on a poisoned context; the worker exits the same way
"""


def test_a_device_side_assert_is_recognised_as_poisoning_the_device() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ASSERT_SCRIPT)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["faults"][0] == "ok"
    assert result["faults"][1] == "poisoned", result
    assert result["faults"][2] != "ok", "the context should stay unusable"
    assert result["poison"] is True
    assert "device-side assert" in result["message"] or "CUDA error" in result["message"]


# ---- placement: instance_group gpus [1] ---------------------------------------------------------


@pytest.mark.gpu(count=2)
@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_kind_gpu_with_gpus_1_runs_on_cuda_1(tmp_path: Path) -> None:
    pinned = "instance_group [ { kind: KIND_GPU gpus: [1] } ]"
    write_model(tmp_path, "m", "mlp", batching() + pinned)
    cpu = load_model(scan_model(tmp_path / "m"), 1, "cpu")
    replies = Replies()
    table = ModelTable(tmp_path, WorkerDevices((0, 1), GPUS), replies, min_credit=4)
    try:
        table.load_all()
        served = table.served[("m", "1")]
        assert [i.model.device for i in served.instances] == ["cuda:1"]
        model = served.instances[0].model
        assert isinstance(model, TorchModel) and model._cuda is not None
        assert model._cuda.stream.device == torch.device("cuda:1")
        x = mlp_rows(3, 0)
        served.enter()
        served.inbox.put(inbound(1, request_bytes({"X": x})))
        reply = replies.wait_for(1)[0]
        np.testing.assert_allclose(
            reply.outputs()["Y"], cpu.execute({"X": x})["Y"], rtol=1e-4, atol=1e-5
        )
    finally:
        table.stop_all()


def test_kind_cpu_stays_on_the_cpu_of_a_gpu_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "m", "mlp", batching() + "instance_group [ { kind: KIND_CPU } ]")
    table = ModelTable(tmp_path, WorkerDevices((0,), GPUS), Replies(), min_credit=4)
    try:
        table.load_all()
        instances = table.served[("m", "1")].instances
        assert [i.model.device for i in instances] == ["cpu"]
        model = instances[0].model
        assert isinstance(model, TorchModel) and model._cuda is None
    finally:
        table.stop_all()
