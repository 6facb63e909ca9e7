"""Which devices a worker owns and where each model instance runs: pure functions of what the
host has, so that every rule is tested on a CPU machine with fakes for the GPU counts.

- ``resolve_devices``: the worker's ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into the
  GPUs it owns. ``auto`` owns every visible GPU when torch can use CUDA, the CPU when the host
  has no NVIDIA GPU, and fails loudly (``DeviceError``) on an NVIDIA host whose torch cannot use
  CUDA (a CPU build, a driver too old): serving on the CPU there is never what was meant.
  ``make run`` starts one worker per visible GPU, each with ``--device cuda:i``.
- ``place_instances``: a model's ``instance_group`` entries into one device per instance, as
  Triton reads them: ``KIND_CPU`` on the CPU; ``KIND_GPU`` ``count`` instances on each listed
  GPU this worker owns (all it owns when none are listed); ``KIND_AUTO`` like ``KIND_GPU`` on a
  worker with GPUs, else like ``KIND_CPU``. A GPU index that is not visible, ``KIND_GPU`` on a
  CPU worker and ``KIND_MODEL`` are refused (``PlacementError``). Listed GPUs that all belong
  to other workers place nothing here: the workers owning them serve the model.
- ``host_has_nvidia_gpu``: the device node or ``nvidia-smi -L``, without touching torch.cuda.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NVIDIA_DEVICE_NODE = "/dev/nvidia0"
NVIDIA_SMI_TIMEOUT_S = 10.0

KIND_AUTO, KIND_GPU, KIND_CPU, KIND_MODEL = 0, 1, 2, 3  # model_config.proto's Kind values
KIND_NAMES = {KIND_AUTO: "KIND_AUTO", KIND_GPU: "KIND_GPU", KIND_CPU: "KIND_CPU",
              KIND_MODEL: "KIND_MODEL"}  # fmt: skip


class DeviceError(Exception):
    """The worker's device setting cannot be honoured on this host; the worker does not start."""


class PlacementError(Exception):
    """A model's ``instance_group`` cannot be placed on this worker; the model is not loaded."""


@dataclass(frozen=True)
class CudaState:
    """What torch reports about CUDA (``cuda_state`` reads it)."""

    available: bool
    device_count: int
    torch_version: str = ""
    cuda_version: str | None = None  # None: a torch built without CUDA


@dataclass(frozen=True)
class WorkerDevices:
    """The GPUs a worker owns (none: it computes on the CPU) and how many are visible."""

    gpus: tuple[int, ...] = ()
    visible: int = 0

    @property
    def default(self) -> str:
        """The device of instances placed without a choice: the first owned GPU, or the CPU."""
        return f"cuda:{self.gpus[0]}" if self.gpus else "cpu"

    def describe(self) -> str:
        if not self.gpus:
            return "cpu"
        return ", ".join(f"cuda:{g}" for g in self.gpus) + f" (of {self.visible} visible)"


CPU_ONLY = WorkerDevices()


@dataclass(frozen=True)
class InstanceGroup:
    """One ``instance_group`` entry, as the placement reads it."""

    kind: int = KIND_AUTO
    count: int = 1
    gpus: tuple[int, ...] = ()


def host_has_nvidia_gpu(
    exists: Callable[[str], bool] = os.path.exists,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[Sequence[str]], str] | None = None,
) -> bool:
    """True when the host has an NVIDIA GPU, whatever torch can do with it."""
    if exists(NVIDIA_DEVICE_NODE):
        return True
    if which("nvidia-smi") is None:
        return False
    try:
        listing = (run or _run_text)(["nvidia-smi", "-L"])
    except (OSError, subprocess.SubprocessError):
        return False
    return count_gpus(listing) > 0


def count_gpus(nvidia_smi_listing: str) -> int:
    """GPUs in ``nvidia-smi -L`` output ("GPU 0: NVIDIA H100 (UUID: ...)" a line)."""
    return sum(1 for line in nvidia_smi_listing.splitlines() if line.startswith("GPU "))


def cuda_state() -> CudaState:
    """Ask torch (imported here, in the worker only)."""
    import torch

    available = torch.cuda.is_available()
    return CudaState(
        available,
        torch.cuda.device_count() if available else 0,
        torch.__version__,
        torch.version.cuda,
    )


def resolve_devices(requested: str, cuda: CudaState, nvidia_host: bool) -> WorkerDevices:
    """The devices a worker started with ``--device requested`` owns. Raises DeviceError."""
    spec = requested.strip().lower()
    if spec == "cpu":
        return CPU_ONLY
    if spec not in ("auto", "cuda") and not spec.startswith("cuda:"):
        raise DeviceError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    usable = cuda.available and cuda.device_count > 0
    if not usable:
        if spec == "auto" and not nvidia_host:
            return CPU_ONLY
        raise DeviceError(_no_cuda(requested, cuda, nvidia_host))
    everything = tuple(range(cuda.device_count))
    if spec in ("auto", "cuda"):
        return WorkerDevices(everything, cuda.device_count)
    index_text = spec.removeprefix("cuda:")
    if not index_text.isdigit():
        raise DeviceError(f"--device {requested!r}: the GPU index must be a number")
    index = int(index_text)
    if index >= cuda.device_count:
        raise DeviceError(
            f"--device {requested}: only {cuda.device_count} GPU(s) are visible "
            f"(cuda:0..cuda:{cuda.device_count - 1}); check CUDA_VISIBLE_DEVICES"
        )
    return WorkerDevices((index,), cuda.device_count)


def _no_cuda(requested: str, cuda: CudaState, nvidia_host: bool) -> str:
    if cuda.cuda_version is None:
        why = f"torch {cuda.torch_version} is a CPU-only build"
        fix = (
            'install a CUDA build (make install TORCH_SPEC="torch==2.13.0 --index-url '
            'https://download.pytorch.org/whl/cu128")'
        )
    else:
        why = f"torch {cuda.torch_version} (CUDA {cuda.cuda_version}) finds no usable GPU"
        fix = "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
    where = "this host has an NVIDIA GPU but " if nvidia_host else ""
    return f"--device {requested}: {where}{why}; {fix}, or pass --device cpu to serve on the CPU"


def instance_groups(config: object) -> list[InstanceGroup]:
    """The ``instance_group`` entries of a ``ModelConfig`` proto (one default entry if none)."""
    groups = [
        InstanceGroup(int(g.kind), max(1, int(g.count)), tuple(int(i) for i in g.gpus))
        for g in getattr(config, "instance_group", ())
    ]
    return groups or [InstanceGroup()]


def place_instances(model: str, groups: Sequence[InstanceGroup], owned: WorkerDevices) -> list[str]:
    """One device per instance of ``model`` on this worker (may be empty: see the module
    docstring). Raises PlacementError with a message naming the model and the entry."""
    devices: list[str] = []
    for n, group in enumerate(groups):
        where = f"model '{model}' instance_group[{n}]"
        kind = group.kind
        if kind == KIND_MODEL or kind not in KIND_NAMES:
            raise PlacementError(
                f"{where}: kind {KIND_NAMES.get(kind, kind)} is not supported; "
                "use KIND_GPU, KIND_CPU or KIND_AUTO"
            )
        if kind == KIND_CPU:
            if group.gpus:
                raise PlacementError(f"{where}: KIND_CPU cannot list gpus {list(group.gpus)}")
            devices += ["cpu"] * group.count
            continue
        if not owned.gpus:
            if kind == KIND_GPU:
                raise PlacementError(
                    f"{where}: KIND_GPU, but this worker computes on the CPU "
                    "(no usable GPU, or --device cpu)"
                )
            if group.gpus:
                raise PlacementError(
                    f"{where}: lists gpus {list(group.gpus)}, but this worker has no GPU"
                )
            devices += ["cpu"] * group.count
            continue
        unknown = [g for g in group.gpus if g < 0 or g >= owned.visible]
        if unknown:
            raise PlacementError(
                f"{where}: gpus {unknown} not visible (this host shows {owned.visible} GPU(s))"
            )
        listed = group.gpus or owned.gpus
        for gpu in sorted(set(listed) & set(owned.gpus)):
            devices += [f"cuda:{gpu}"] * group.count
    return devices


def warm_batch_sizes(max_batch_size: int, preferred: Sequence[int]) -> list[int]:
    """The batch sizes an instance runs before it takes traffic: 1, the preferred sizes and
    the maximum (just the unbatched call when the model does not batch), ascending."""
    if max_batch_size <= 0:
        return [0]
    sizes = {1, max_batch_size, *(p for p in preferred if 0 < p <= max_batch_size)}
    return sorted(sizes)


def _run_text(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
    )
    return done.stdout if done.returncode == 0 else ""


def set_tf32(allow: bool, owned: WorkerDevices) -> None:
    """Set TF32 for float32 matmuls and cuDNN convolutions explicitly (torch's defaults differ
    between the two and between releases) and say so at start."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    state = "on" if allow else "off"
    if owned.gpus:
        logger.info("TF32 %s for float32 matmuls and convolutions (--allow-tf32)", state)
    else:
        logger.debug("TF32 %s (no GPU: it has no effect)", state)
