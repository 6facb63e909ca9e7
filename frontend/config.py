"""Frontend settings, built once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from fabric.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS


@dataclass(frozen=True)
class FrontendConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    brokers: tuple[str, ...] = field(default=("tcp://127.0.0.1:5555",))
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = HEARTBEAT_LIVENESS
    max_message_bytes: int = 64 * 1024 * 1024
    default_timeout_s: float = 60.0
    max_retries: int = 2
    max_in_flight: int = 20_000
    retry_budget_ratio: float = 0.1
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    shutdown_grace_s: float = 5.0
    control_timeout_s: float = 120.0
    server_name: str = "fabricserve"
