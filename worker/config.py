"""Worker settings, built once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS


@dataclass(frozen=True)
class WorkerConfig:
    brokers: tuple[str, ...] = ("tcp://127.0.0.1:5556",)  # registers with each
    model_repository: str = "models"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = HEARTBEAT_LIVENESS
    max_message_bytes: int = 256 * 1024 * 1024
    min_credit: int = 4
    torch_threads: int = 0  # 0 = torch's default
    inline_compute_ms: float = 20.0  # CPU models with shorter batches run on the I/O thread
    drain_grace_s: float = 10.0
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = "127.0.0.1"
    poll_interval_s: float = 0.0  # 0 = only explicit load/unload
    curve_server_key: str = ""  # broker's CURVE .key file: turns CURVE on
    curve_client_cert: str = ""  # this worker's .key_secret (when the broker allow-lists)
