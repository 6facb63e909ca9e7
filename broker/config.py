"""Broker settings, built once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS


@dataclass(frozen=True)
class BrokerConfig:
    frontend_bind: str = "tcp://127.0.0.1:5555"
    worker_bind: str = "tcp://127.0.0.1:5556"
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = HEARTBEAT_LIVENESS
    max_queued: int = 10_000
    max_message_bytes: int = 256 * 1024 * 1024
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = "127.0.0.1"
    drain_grace_s: float = 5.0
    curve_secret_cert: str = ""  # broker's .key_secret: turns CURVE on
    curve_clients_dir: str = ""  # allowed client public keys; "" = any client
