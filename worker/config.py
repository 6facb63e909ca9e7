"""Worker settings, built once in ``__main__`` from flags and environment (``fabric.cli``)."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.cli import CurveClientSettings, setting
from fabric.sockets import MAX_MESSAGE_BYTES

ENV_PREFIX = "WORKER"
POLL_DEFAULT_INTERVAL_S = 15.0  # Triton's --repository-poll-secs default


@dataclass(frozen=True)
class WorkerConfig(CurveClientSettings):
    """Worker settings"""

    brokers: tuple[str, ...] = setting(
        ("tcp://127.0.0.1:5556",),
        "broker endpoint(s) for workers, comma separated; the worker registers with each and "
        "splits its credit between them",
        flag="--broker",
    )
    model_repository: str = setting("models", "model repository directory")
    device: str = setting(
        "auto",
        "auto (every visible GPU, else the CPU; fails on a GPU host whose torch cannot use "
        "CUDA), cpu, cuda or cuda:N",
    )
    allow_tf32: bool = setting(
        False, "let float32 matmuls and convolutions use TF32 on GPUs (faster, ~3 digits)"
    )
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES,
        "largest request or response of any tier (one value for all tiers)",
        env="FABRIC_MAX_MESSAGE_BYTES",
    )
    min_credit: int = setting(
        4, "fewest requests a loaded model version takes at once (its credit floor)"
    )
    torch_threads: int = setting(0, "torch intra-op threads, 0 = torch's default")
    inline_compute_ms: float = setting(
        20.0,
        "run a single-instance CPU model on the I/O thread (no thread hand-off per batch) "
        "while its batches take less than this; 0 = always a compute thread",
    )
    drain_grace_s: float = setting(10.0, "on shutdown, longest wait for requests in flight")
    poll_interval_s: float = setting(
        0.0,
        "rescan the repository this often; 0 = never, or every 15 s in model control mode "
        "poll (Triton's --repository-poll-secs default)",
    )
    model_control_mode: str = setting(
        "none",
        "none | poll | explicit, as Triton's; poll rescans the repository (see poll_interval_s)",
        env="MODEL_CONTROL_MODE",
        choices=("none", "poll", "explicit"),
    )
    allow_model_file_uploads: bool = setting(
        False,
        "accept RepositoryModelLoad 'file:' parameters (they can carry a model.py that this "
        "worker will execute); off unless the operator turns it on",
    )

    @property
    def effective_poll_interval_s(self) -> float:
        """How often the repository is rescanned: as set, or Triton's default in poll mode."""
        if self.poll_interval_s > 0:
            return self.poll_interval_s
        return POLL_DEFAULT_INTERVAL_S if self.model_control_mode == "poll" else 0.0
