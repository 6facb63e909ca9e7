"""GPU utilisation, memory and power of the worker's CUDA device, under Triton's names
(``nv_gpu_utilization`` 0..1, ``nv_gpu_memory_total_bytes``, ``nv_gpu_memory_used_bytes``,
``nv_gpu_power_usage`` in watts; label ``gpu_uuid``), read through NVML at scrape time.

NVML comes from ``nvidia-ml-py`` (module ``pynvml``, in the ``worker`` extra). On a CPU
worker, without the package, or without the driver's library, there is no probe and no GPU
series at all (never zeros that look like an idle GPU).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)


def _device_uuid(device: str) -> str | None:
    """The CUDA device's UUID as torch sees it (``CUDA_VISIBLE_DEVICES`` renumbers indices, so
    NVML's index cannot be trusted), or None when torch cannot say."""
    try:
        import torch

        index = int(device.partition(":")[2] or 0)
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an old torch without .uuid, or no CUDA: fall back to the index
        return None


class GpuProbe:
    def __init__(self, nvml: Any, handle: Any, uuid: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self.uuid = uuid

    @classmethod
    def open(cls, device: str) -> GpuProbe | None:
        """A probe of ``device`` (``cuda`` / ``cuda:N``); None on a CPU device or without NVML."""
        if not device.startswith("cuda"):
            return None
        try:
            import pynvml
        except ImportError:
            logger.info("no GPU metrics: nvidia-ml-py is not installed")
            return None
        try:
            pynvml.nvmlInit()
            want = _device_uuid(device)
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
            for handle in handles:
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                if want is not None and _same_uuid(uuid, want):
                    return cls(pynvml, handle, uuid)
            index = int(device.partition(":")[2] or 0)
            if want is None and index < len(handles):
                return cls(pynvml, handles[index], _text(pynvml.nvmlDeviceGetUUID(handles[index])))
        except Exception as exc:  # NVMLError and its many subclasses
            logger.info("no GPU metrics: NVML unavailable (%s)", exc)
            return None
        logger.info("no GPU metrics: NVML does not list %s", device)
        return None

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        labels = [self.uuid]
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
            mem = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except Exception:  # a driver hiccup must not break the scrape of everything else
            return
        yield _gauge("nv_gpu_utilization", "GPU utilization rate (0.0 - 1.0)", labels, util)
        yield _gauge("nv_gpu_memory_total_bytes", "GPU total memory, bytes", labels, mem.total)
        yield _gauge("nv_gpu_memory_used_bytes", "GPU used memory, bytes", labels, mem.used)
        try:
            watts = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except Exception:  # not every board reports power
            return
        yield _gauge("nv_gpu_power_usage", "GPU power usage, watts", labels, watts)


def _gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["gpu_uuid"])
    g.add_metric(labels, value)
    return g


def _same_uuid(a: str, b: str) -> bool:
    """NVML writes ``GPU-8c6b...-...``; torch's spelling varies by version (dashes, prefix)."""

    def norm(u: str) -> str:
        return u.lower().removeprefix("gpu-").replace("-", "")

    return norm(a) == norm(b)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
