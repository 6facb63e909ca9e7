"""Broker settings, built once in ``__main__`` from flags and environment (``fabric.cli``)."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.cli import FabricSettings, setting

ENV_PREFIX = "BROKER"


@dataclass(frozen=True)
class BrokerConfig(FabricSettings):
    """Broker settings"""

    frontend_bind: str = setting("tcp://127.0.0.1:5555", "endpoint frontends connect to")
    worker_bind: str = setting("tcp://127.0.0.1:5556", "endpoint workers connect to")
    max_queued: int = setting(10_000, "requests waiting for credit before RESOURCE_EXHAUSTED")
    max_message_bytes: int = setting(
        256 * 1024 * 1024, "largest ZeroMQ message accepted", env="FABRIC_MAX_MESSAGE_BYTES"
    )
    drain_grace_s: float = setting(5.0, "on shutdown, longest wait for requests in flight")
    curve_secret_cert: str = setting(
        "", "broker's CURVE .key_secret file (default: broker.key_secret of --fabric-keys)"
    )
    curve_frontends_dir: str = setting(
        "", "allowed frontend .key files (default: allow/frontends of --fabric-keys); none = nobody"
    )
    curve_workers_dir: str = setting(
        "", "allowed worker .key files (default: allow/workers of --fabric-keys); none = nobody"
    )
