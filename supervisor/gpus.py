"""How many workers ``make run`` starts and on which GPU each computes, without importing torch.

``--workers auto`` (the default) means one worker per visible GPU, or one on the CPU when the
host shows none. Worker ``i`` gets ``--device cuda:(i mod GPUs)``, so that n workers never all
land on GPU 0, and each still sees every GPU (``instance_group`` ``gpus: [1]`` names the same
GPU in each). Visible GPUs: ``nvidia-smi -L``, narrowed by ``CUDA_VISIBLE_DEVICES`` when set.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

AUTO = "auto"
NVIDIA_SMI_TIMEOUT_S = 10.0


def visible_gpus(nvidia_smi_listing: str, cuda_visible_devices: str | None) -> int:
    """GPUs a CUDA process started here can use."""
    listed = sum(1 for line in nvidia_smi_listing.splitlines() if line.startswith("GPU "))
    if cuda_visible_devices is None:
        return listed
    count = 0
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        # CUDA stops at the first entry that is not a device (e.g. -1 hides them all).
        if not entry or entry.startswith("-"):
            break
        count += 1
    return min(count, listed)


def worker_plan(requested: str, gpus: int) -> tuple[int, tuple[str, ...]]:
    """(worker count, the ``--device`` of each, empty: leave the worker's default)."""
    if requested == AUTO:
        count = max(1, gpus)
    else:
        try:
            count = int(requested)
        except ValueError:
            raise ValueError(f"workers must be a number or 'auto', got {requested!r}") from None
    if gpus == 0:
        return count, ()
    return count, tuple(f"cuda:{i % gpus}" for i in range(count))


def probe_gpus(
    env: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[Sequence[str]], str] | None = None,
) -> int:
    """Visible GPUs on this host (0 without ``nvidia-smi`` or when it fails)."""
    if which("nvidia-smi") is None:
        return 0
    try:
        listing = (run or _run_text)(["nvidia-smi", "-L"])
    except (OSError, subprocess.SubprocessError):
        return 0
    return visible_gpus(listing, env.get("CUDA_VISIBLE_DEVICES"))


def _run_text(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
    )
    return done.stdout if done.returncode == 0 else ""
