"""The CUDA execution path of a TorchScript/torch.export model instance: a stream of its own,
pinned host staging buffers, non-blocking copies and an event per batch. Used only when the
instance's device is a CUDA device; the CPU path never touches this module's machinery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from .model_config import DATATYPES, ModelSpec, TensorSpec

logger = logging.getLogger(__name__)

STREAMS_PER_POOL = 32
"""Streams in each of torch's per-device, per-priority pools (``torch.cuda.Stream()`` hands them
out round-robin, so the 33rd stream made is the first one again)."""
STREAM_PRIORITIES = (0, -1)  # normal, then high: two pools, 64 distinct streams a device

S = TypeVar("S")


class StreamLeases(Generic[S]):
    """Streams of one device held by live instances, so that no two instances share one.

    Models reloaded many times would otherwise get a stream still used by a live instance,
    and each would wait for the other's batches. ``make(priority)`` draws from torch's pool
    and ``key`` identifies a stream; both are injectable, so this is tested without a GPU.
    """

    def __init__(self, make: Callable[[int], S], key: Callable[[S], int]) -> None:
        self._make = make
        self._key = key
        self._lock = threading.Lock()
        self._live: dict[int, int] = {}  # stream key -> instances holding it

    def acquire(self) -> S:
        with self._lock:
            for priority in STREAM_PRIORITIES:
                for _ in range(STREAMS_PER_POOL):
                    stream = self._make(priority)
                    if self._key(stream) not in self._live:
                        self._live[self._key(stream)] = 1
                        return stream
            stream = self._make(STREAM_PRIORITIES[0])
            self._live[self._key(stream)] += 1
        logger.warning(
            "more than %d model instances on one GPU: some share a CUDA stream",
            STREAMS_PER_POOL * len(STREAM_PRIORITIES),
        )
        return stream

    def release(self, stream: S) -> None:
        with self._lock:
            key = self._key(stream)
            held = self._live.get(key, 0)
            if held <= 1:
                self._live.pop(key, None)
            else:
                self._live[key] = held - 1

    @property
    def live(self) -> int:
        return len(self._live)


_leases: dict[int, StreamLeases[torch.cuda.Stream]] = {}
_leases_lock = threading.Lock()


def stream_leases(device: torch.device) -> StreamLeases[torch.cuda.Stream]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _leases_lock:
        leases = _leases.get(index)
        if leases is None:
            leases = _leases[index] = StreamLeases(
                lambda priority: torch.cuda.Stream(device=index, priority=priority),
                lambda stream: int(stream.cuda_stream),
            )
        return leases


class HostStaging:
    """Reusable host buffers, one per input, each growing to the largest batch it has held.

    ``stage`` copies an array (read-only request views included) into its slot's buffer and
    returns a tensor view of it. On CUDA ``allocate`` gives pinned memory, so the host→device
    copy that follows can run asynchronously; it is injectable so that this bookkeeping is
    testable without a GPU. A buffer is refilled only after the copies reading it completed:
    ``CudaExecution`` waits for its stream at the end of every batch, failed ones included.
    """

    def __init__(self, allocate: Callable[[int], torch.Tensor]) -> None:
        self._allocate = allocate
        self.buffers: dict[int, torch.Tensor] = {}  # slot → flat uint8 buffer

    def stage(self, slot: int, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        nbytes = array.nbytes
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < nbytes:
            # Doubling keeps reallocation rare while batch sizes ramp up.
            size = max(nbytes, 2 * buffer.numel()) if buffer is not None else nbytes
            buffer = self._allocate(size)
            self.buffers[slot] = buffer
        flat = buffer[:nbytes]
        host = flat.numpy().view(array.dtype).reshape(array.shape)
        np.copyto(host, array, casting="no")
        return flat.view(dtype).view(array.shape)


class CudaExecution:
    """The CUDA path of one ``TorchModel``: its stream, its pinned buffers, one batch at a time.

    A batch is staged into pinned buffers, copied to the device without blocking, run and
    copied back into pinned host tensors, all queued on this instance's stream; the calling
    thread then waits on an event for that stream alone (``Event.synchronize`` releases the GIL),
    so the other instances' threads keep the GPU busy meanwhile. Device tensors are allocated
    and used on this one stream, so the caching allocator needs no ``record_stream``.
    """

    def __init__(self, device: torch.device, spec: ModelSpec) -> None:
        self.device = device
        self._leases = stream_leases(device)
        self.stream = self._leases.acquire()
        # The weights were copied on the loading thread's current stream; start after them.
        self.stream.wait_stream(torch.cuda.current_stream(device))
        # Blocking: the waiting thread sleeps in the driver instead of spinning a core.
        self.done = torch.cuda.Event(blocking=True)
        self.staging = HostStaging(_pinned_bytes)
        self._inputs = [(t.name, _torch_dtype(t)) for t in spec.inputs]

    def run(self, module: Callable[..., Any], inputs: dict[str, np.ndarray]) -> Any:
        """Run one batch; CUDA tensors in the result come back as pinned CPU tensors."""
        stream = self.stream
        try:
            with torch.cuda.stream(stream):
                args = []
                for slot, (name, dtype) in enumerate(self._inputs):
                    host = self.staging.stage(slot, inputs[name], dtype)
                    args.append(host.to(self.device, non_blocking=True))
                result = _copy_to_host(module(*args))
                self.done.record(stream)
            self.done.synchronize()
        except BaseException:
            # Copies queued before the failure may still read the staging buffers, which the
            # next batch would overwrite.
            self.done.record(stream)
            self.done.synchronize()
            raise
        return result

    def close(self) -> None:
        try:
            self.stream.synchronize()
        except RuntimeError as exc:  # a poisoned context (see gpu_faults) cannot synchronise
            logger.warning("closing a model instance's stream: %s", str(exc)[:200])
        finally:
            self.staging.buffers.clear()
            self._leases.release(self.stream)


def _pinned_bytes(size: int) -> torch.Tensor:
    return torch.empty(size, dtype=torch.uint8, pin_memory=True)


def _torch_dtype(tensor: TensorSpec) -> torch.dtype:
    dtype = DATATYPES[tensor.datatype].torch_dtype
    if dtype is None:  # BYTES, which _load_torch_module refuses before a TorchModel exists
        raise ValueError(f"'{tensor.name}' is {tensor.datatype}, which has no torch dtype")
    return dtype


def _copy_to_host(result: Any) -> Any:
    """Queue copies of the CUDA tensors among a module's outputs into pinned host tensors.

    The host tensors come from PyTorch's caching host allocator, which reuses their memory
    once nothing refers to them any more: the arrays handed to the caller own their data
    rather than aliasing a buffer that the next batch overwrites.
    """

    def to_host(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.device.type != "cuda":
            return value
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        return host

    if isinstance(result, Mapping):
        return {name: to_host(v) for name, v in result.items()}
    if isinstance(result, tuple | list):
        return [to_host(v) for v in result]
    return to_host(result)
