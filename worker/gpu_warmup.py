"""Getting a GPU model instance ready on its own compute thread, before it takes traffic.

cuBLAS handles, cuDNN autotuning, TorchScript's profiling runs and the caching allocator's
first blocks are per thread, per shape or per stream: a warm-up on the control thread leaves
the instance's thread to pay for them on live requests. So each GPU instance's thread binds
its device (``torch.cuda.set_device``: kernels launched by libraries that read the current
device land on the right GPU) and runs batches of 1 row, the preferred sizes and the maximum
(``devices.warm_batch_sizes``) before the model version is announced. CPU instances keep the
control thread's timed warm-up (``models.warm_up``), which decides whether they run inline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from .devices import CPU_ONLY, WorkerDevices, cuda_state, host_has_nvidia_gpu, resolve_devices
from .devices import warm_batch_sizes as warm_batch_sizes
from .gpu_faults import Fault, classify, release_cached_memory
from .loaders import LoadedModel
from .model_config import ModelSpec

logger = logging.getLogger(__name__)

PREPARE_TIMEOUT_S = 600.0
"""Longest wait for an instance's warm-up (first CUDA kernels of a large model compile)."""


def owned_devices(device: str | WorkerDevices) -> WorkerDevices:
    """A ``ModelTable``'s devices: given whole, or read from a device string (tests)."""
    if isinstance(device, WorkerDevices):
        return device
    if device.strip().lower() == "cpu":
        return CPU_ONLY
    return resolve_devices(device, cuda_state(), host_has_nvidia_gpu())


def on_gpu(model: LoadedModel) -> bool:
    return torch.device(model.device).type == "cuda"


def bind_thread(device: str) -> None:
    """Make ``device`` the calling thread's current CUDA device (nothing for the CPU)."""
    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)


def warm_inputs(spec: ModelSpec, rows: int) -> dict[str, np.ndarray] | None:
    """Zero-filled inputs of ``rows`` rows (variable dims 1); None for BYTES inputs, which
    no zero fills meaningfully."""
    if any(t.datatype == "BYTES" for t in spec.inputs):
        return None
    batch = (rows,) if spec.max_batch_size > 0 else ()
    return {
        t.name: np.zeros(batch + tuple(1 if d < 0 else d for d in t.dims), dtype=t.numpy_dtype)
        for t in spec.inputs
    }


def preferred_sizes(spec: ModelSpec) -> tuple[int, ...]:
    db = spec.dynamic_batching
    return tuple(db.preferred_batch_size) if db is not None else ()


def warm_on_thread(model: LoadedModel, log: bool = True) -> list[tuple[int, float]]:
    """Bind the model's device and run it once at each warm-up size on the calling thread;
    (rows, seconds) per size."""
    bind_thread(model.device)
    spec = model.spec
    took: list[tuple[int, float]] = []
    for rows in warm_batch_sizes(spec.max_batch_size, preferred_sizes(spec)):
        inputs = warm_inputs(spec, rows)
        if inputs is None:
            break
        started = time.monotonic()
        try:
            model.execute(inputs)
        except Exception as exc:
            if rows <= 1 or classify(exc) is not Fault.OUT_OF_MEMORY:
                raise
            # Live batches this large are split when they do not fit (batch_step): no reason
            # to refuse the model.
            logger.warning(
                "model %s: a warm-up batch of %d rows ran out of device memory", spec.name, rows
            )
            release_cached_memory()
            break
        took.append((rows, time.monotonic() - started))
    if log and took:
        logger.info(
            "model %s version %s warmed on %s: %s",
            spec.name,
            model.version,
            model.device,
            ", ".join(f"{rows} rows {s * 1e3:.1f} ms" for rows, s in took),
        )
    return took


def preparation(model: LoadedModel) -> Callable[[], None] | None:
    """What an instance's thread runs before taking traffic: nothing on the CPU."""
    if not on_gpu(model):
        return None

    def prepare() -> None:
        warm_on_thread(model)

    return prepare
