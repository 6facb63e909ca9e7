"""The CUDA execution path of ``TorchModel`` (a stream per instance, pinned staging buffers)
gives the CPU's results; the CPU path never touches pinned memory.

GPU tests are marked ``gpu`` and skipped without CUDA; the staging bookkeeping they rely on is
also tested here on the CPU with an ordinary allocator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fabric.errors import RequestError
from worker.executor import HostStaging
from worker.loaders import LoadedModel, TorchModel, load_model
from worker.model_config import DATATYPES
from worker.models import ModelTable
from worker.repository import scan_model

from .test_runtime import Replies, batching, inbound, mlp_rows, request_bytes, write_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def load_mlp(root: Path, device: str, extra_config: str = "") -> LoadedModel:
    path = root / "m"
    if not path.exists():
        write_model(root, "m", "mlp", extra_config)
    return load_model(scan_model(path), 1, device)


def read_only(array: np.ndarray) -> np.ndarray:
    """An array like the codec produces: a read-only view over request bytes."""
    return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)


# ---- CPU: no pinned memory, staging bookkeeping -----------------------------------------------


def test_cpu_path_creates_no_stream_and_no_pinned_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned: list[str] = []
    real_empty = torch.empty

    def spy_empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("pin_memory"):
            pinned.append("torch.empty(pin_memory=True)")
        return real_empty(*args, **kwargs)

    def spy_pin(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        pinned.append("Tensor.pin_memory()")
        return self

    monkeypatch.setattr(torch, "empty", spy_empty)
    monkeypatch.setattr(torch.Tensor, "pin_memory", spy_pin)
    model = load_mlp(tmp_path, "cpu")
    assert isinstance(model, TorchModel)
    x = mlp_rows(5, 0)
    for inputs in (x, read_only(x), x[:2]):
        out = model.execute({"X": inputs})
        assert out["Y"].shape == (inputs.shape[0], 3)
    assert model._cuda is None
    assert pinned == []


def test_cpu_path_shares_writable_inputs_without_copying(tmp_path: Path) -> None:
    seen: list[int] = []

    def module(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.data_ptr())
        return x[:, :3].clone()

    model = load_mlp(tmp_path, "cpu")
    assert isinstance(model, TorchModel)
    torch_model = TorchModel(model.spec, "1", "cpu", module)
    x = mlp_rows(4, 1)
    np.testing.assert_array_equal(torch_model.execute({"X": x})["Y"], x[:, :3])
    assert seen == [x.ctypes.data]


class CountingAllocator:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, size: int) -> torch.Tensor:
        self.sizes.append(size)
        return torch.empty(size, dtype=torch.uint8)


NUMERIC = sorted(name for name, dt in DATATYPES.items() if dt.torch_dtype is not None)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_staging_views_hold_the_array_for_every_datatype(datatype: str) -> None:
    dt = DATATYPES[datatype]
    assert dt.torch_dtype is not None
    rng = np.random.default_rng(0)
    array = rng.integers(0, 100, size=(3, 5)).astype(dt.numpy_dtype)
    staging = HostStaging(CountingAllocator())
    with torch.inference_mode():
        for source in (array, read_only(array), array[:, ::2], array.T):
            view = staging.stage(0, source, dt.torch_dtype)
            assert view.dtype == dt.torch_dtype
            assert tuple(view.shape) == source.shape
            assert view.is_contiguous()
            np.testing.assert_array_equal(view.numpy(), source)


def test_staging_buffers_are_reused_and_grow_by_doubling() -> None:
    allocate = CountingAllocator()
    staging = HostStaging(allocate)
    rows = np.ones((1, 4), dtype=np.float32)  # 16 bytes a row
    with torch.inference_mode():
        first = staging.stage(0, np.repeat(rows, 2, axis=0), torch.float32)
        staging.stage(0, rows, torch.float32)  # smaller: same buffer
        assert staging.stage(0, np.repeat(rows, 2, axis=0), torch.float32).data_ptr() == (
            first.data_ptr()
        )
        staging.stage(0, np.repeat(rows, 3, axis=0), torch.float32)  # 48 > 32: doubles to 64
        staging.stage(0, np.repeat(rows, 4, axis=0), torch.float32)  # 64 fits
        staging.stage(0, np.repeat(rows, 9, axis=0), torch.float32)  # 144 > 2 x 64: exactly 144
        staging.stage(1, rows.astype(np.int64), torch.int64)  # each input has its own buffer
        empty = staging.stage(2, np.zeros((2, 0), dtype=np.float32), torch.float32)
    assert allocate.sizes == [32, 64, 144, 32, 0]
    assert tuple(empty.shape) == (2, 0)
    assert sorted(staging.buffers) == [0, 1, 2]


# ---- CUDA ----------------------------------------------------------------------------------------


def outputs_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_cuda_results_equal_cpu_for_growing_and_shrinking_batches(tmp_path: Path) -> None:
    cpu = load_mlp(tmp_path, "cpu")
    gpu = load_mlp(tmp_path, "cuda:0")
    assert isinstance(gpu, TorchModel) and gpu._cuda is not None
    assert gpu._cuda.stream != torch.cuda.current_stream(0)
    kept = []
    for step, rows in enumerate([1, 8, 3, 8, 2, 5, 1]):
        x = mlp_rows(rows, step)
        for inputs in (x, read_only(x)):
            out = gpu.execute({"X": inputs})
            outputs_close(out, cpu.execute({"X": x}))
            kept.append((out, cpu.execute({"X": x})))
    # Results own their memory: later batches never overwrite an earlier batch's outputs.
    for out, want in kept:
        outputs_close(out, want)
    staged = gpu._cuda.staging.buffers[0]
    assert staged.is_pinned()
    assert staged.numel() >= 8 * 4 * 4
    gpu.close()


@pytest.mark.gpu
@needs_cuda
def test_cuda_model_error_leaves_the_next_batch_correct(tmp_path: Path) -> None:
    cpu = load_mlp(tmp_path, "cpu")
    gpu = load_mlp(tmp_path, "cuda:0")
    with pytest.raises(RequestError, match="model 'm' failed"):
        gpu.execute({"X": np.ones((2, 5), dtype=np.float32)})  # wrong width for the weights
    x = mlp_rows(4, 3)
    outputs_close(gpu.execute({"X": x}), cpu.execute({"X": x}))


@pytest.mark.gpu
@needs_cuda
def test_two_cuda_instances_in_parallel_threads(tmp_path: Path) -> None:
    cpu = load_mlp(tmp_path, "cpu")
    instances = [load_mlp(tmp_path, "cuda:0") for _ in range(2)]
    streams = {m._cuda.stream for m in instances if isinstance(m, TorchModel) and m._cuda}
    assert len(streams) == 2
    batches = [mlp_rows(1 + (i % 8), i) for i in range(200)]
    expected = [cpu.execute({"X": x}) for x in batches]
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def work(model: LoadedModel, offset: int) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait(10)
                for i in range(offset, len(batches), 2):
                    outputs_close(model.execute({"X": batches[i]}), expected[i])
            except BaseException as exc:
                failures.append(exc)

        return run

    threads = [
        threading.Thread(target=work(m, k), name=f"cuda-instance-{k}")
        for k, m in enumerate(instances)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


@pytest.mark.gpu
@needs_cuda
def test_cuda_model_table_batches_requests_like_the_cpu(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "m", "mlp", batching() + "instance_group [ { count: 2 } ]")
    cpu = load_mlp(root, "cpu")
    replies = Replies()
    table = ModelTable(root, "cuda:0", replies, min_credit=4)
    try:
        table.load_all()
        served = table.served[("m", "1")]
        sent = {rid: mlp_rows(1 + rid % 8, rid) for rid in range(1, 41)}
        for rid, x in sent.items():
            served.enter()
            served.inbox.put(inbound(rid, request_bytes({"X": x})))
        replies.wait_for(len(sent), timeout_s=60)
        for rid, reply in replies.by_id().items():
            outputs_close(reply.outputs(), cpu.execute({"X": sent[rid]}))
    finally:
        table.stop_all()
