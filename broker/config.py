"""Broker settings, built once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

MAX_MODELS_PER_PEER = 256
"""Model versions one worker may announce; a larger announcement is refused as a whole."""
MAX_CONFIG_BYTES = 256 * 1024
"""Largest serialized ModelConfig (plus name and version) one announced version may carry."""
MAX_CATALOG_BYTES = 8 * 1024 * 1024
"""Bound on the catalog sent to frontends: well under their fabric message limit (64 MiB by
default, ``frontend/config.py``), so a catalog always reaches them. An announcement that would
grow the catalog past it is refused as a whole."""


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
    max_models_per_peer: int = MAX_MODELS_PER_PEER
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_catalog_bytes: int = MAX_CATALOG_BYTES
