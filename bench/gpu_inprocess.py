"""The in-process half of ``make bench-gpu``, run as its own process (it imports torch, which
``bench.gpu`` may have just installed): what the device gives without any serving.

- ``copies``: host→device copy bandwidth from pageable and from pinned memory (64 KiB, 1 MiB,
  16 MiB): what the worker's pinned staging buffers buy.
- ``paths``: a model's rows/s at batch sizes 1..64 called three ways: ``device`` (input already
  on the device: the compute ceiling), ``naive`` (numpy → pageable ``.to(device)`` → model →
  ``.cpu()`` on the default stream, as a quick server would) and ``executor`` (the worker's
  ``TorchModel.execute``: pinned staging, the instance's own stream, one blocking event).
- ``overlap``: one instance in one thread against two instances in two threads, each on its
  own stream: rows/s of each, so the overlap of two instances is one ratio.

On a host without CUDA the same code runs on the CPU with smaller sizes and says so.

    python -m bench.gpu_inprocess --repo DIR --models mlp,wide_mlp [--quick] > result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES = (1, 8, 64)
COPY_SIZES = (64 * 1024, 1024 * 1024, 16 * 1024 * 1024)
QUICK_COPY_SIZES = (64 * 1024, 1024 * 1024)


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu_name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def timed(fn: Callable[[], object], seconds: float, sync: Callable[[], None]) -> float:
    """Median seconds per call of ``fn`` (synchronised), after a short warm-up."""
    for _ in range(3):
        fn()
    sync()
    times: list[float] = []
    give_up = time.perf_counter() + seconds
    while time.perf_counter() < give_up or len(times) < 5:
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2]


def copies(device: str, sizes: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    target = torch.device(device)
    sync = _sync(target)
    out = []
    for size in sizes:
        pageable = torch.empty(size, dtype=torch.uint8)
        pinned = torch.empty(size, dtype=torch.uint8, pin_memory=target.type == "cuda")
        row: dict[str, Any] = {"bytes": size}
        for name, host in (("pageable", pageable), ("pinned", pinned)):
            s = timed(partial(host.to, target, non_blocking=True), seconds, sync)
            row[f"{name}_gb_s"] = size / s / 1e9
        out.append(row)
    return out


def paths(
    repo: Path, model: str, device: str, sizes: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    from worker.loaders import load_model
    from worker.repository import scan_model

    source = scan_model(repo / model)
    spec = source.spec
    width = spec.inputs[0].dims[0]
    served = load_model(source, max(source.versions), device)
    module = torch.jit.load(
        str(repo / model / str(max(source.versions)) / "model.pt"), map_location=device
    ).eval()
    target = torch.device(device)
    sync = _sync(target)
    rng = np.random.default_rng(0)
    out = []
    with torch.inference_mode():
        for rows in sizes:
            x = rng.standard_normal((rows, width), dtype=np.float32)
            on_device = torch.from_numpy(x).to(target)
            name = spec.inputs[0].name
            calls: dict[str, Callable[[], object]] = {
                "device": partial(module, on_device),
                "naive": partial(_naive, module, x, target),
                "executor": partial(served.execute, {name: x}),
            }
            row: dict[str, Any] = {"batch": rows}
            for how, fn in calls.items():
                row[f"{how}_rows_s"] = rows / timed(fn, seconds, sync)
            out.append(row)
    served.close()
    return out


def overlap(repo: Path, model: str, device: str, rows: int, seconds: float) -> dict[str, Any]:
    """rows/s of one instance alone, and of two instances in two threads together."""
    from worker.loaders import load_model
    from worker.repository import scan_model

    source = scan_model(repo / model)
    spec = source.spec
    x = np.random.default_rng(1).standard_normal((rows, spec.inputs[0].dims[0]), dtype=np.float32)
    inputs = {spec.inputs[0].name: x}
    instances = [load_model(source, max(source.versions), device) for _ in range(2)]
    for m in instances:
        m.execute(inputs)

    def rate(models: list[Any]) -> float:
        done = [0] * len(models)
        stop = time.perf_counter() + seconds

        def work(k: int) -> None:
            while time.perf_counter() < stop:
                models[k].execute(inputs)
                done[k] += rows

        threads = [
            threading.Thread(target=work, args=(k,), name=f"bench-instance-{k}")
            for k in range(len(models))
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done) / (time.perf_counter() - started)

    one = rate(instances[:1])
    two = rate(instances)
    for m in instances:
        m.close()
    return {
        "model": model,
        "batch": rows,
        "one_rows_s": one,
        "two_rows_s": two,
        "two_over_one": two / one if one else None,
    }


def _naive(module: Callable[..., Any], x: np.ndarray, target: torch.device) -> np.ndarray:
    """What a quick server does: a pageable copy in, the default stream, ``.cpu()`` out."""
    return np.asarray(module(torch.from_numpy(x).to(target)).cpu().numpy())


def _sync(target: torch.device) -> Callable[[], None]:
    if target.type == "cuda":
        return lambda: torch.cuda.synchronize(target)
    return lambda: None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--models", default="mlp,wide_mlp")
    p.add_argument("--overlap-model", default="wide_mlp")
    p.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings")
    a = p.parse_args(argv)
    info = device_info()
    device = "cuda:0" if info["cuda_available"] else "cpu"
    quick = a.quick or device == "cpu"
    seconds = 0.1 if quick else 0.4
    sizes = QUICK_BATCH_SIZES if quick else BATCH_SIZES
    if device == "cpu":
        torch.set_num_threads(1)
    result: dict[str, Any] = {"device": device, "info": info, "quick": quick}
    result["copies"] = copies(device, QUICK_COPY_SIZES if quick else COPY_SIZES, seconds)
    result["paths"] = {
        m: paths(a.repo, m, device, sizes, seconds) for m in a.models.split(",") if m
    }
    result["overlap"] = overlap(a.repo, a.overlap_model, device, 8 if quick else 32, 4 * seconds)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
