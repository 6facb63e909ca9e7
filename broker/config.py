"""Broker settings, built once in ``__main__`` from flags and environment (``fabric.cli``)."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.cli import FabricSettings, setting
from fabric.sockets import MAX_MESSAGE_BYTES

ENV_PREFIX = "BROKER"

MAX_MODELS_PER_PEER = 256
"""Model versions one worker may announce; a larger announcement is refused as a whole."""
MAX_CONFIG_BYTES = 256 * 1024
"""Largest serialized ModelConfig (plus name and version) one announced version may carry."""
MAX_CATALOG_BYTES = 8 * 1024 * 1024
"""Bound on the catalog sent to frontends: well under their fabric message limit (64 MiB by
default, ``frontend/config.py``), so a catalog always reaches them. An announcement that would
grow the catalog past it is refused as a whole."""

MAX_QUEUED_BYTES = 1024 * 1024 * 1024
"""Default of ``--max-queued-bytes``: 1 GiB of payloads waiting for worker credit (64 requests
of 16 MiB, 16 at the 64 MiB message limit), the same as a frontend's default
``--max-in-flight-bytes``, so one frontend at its bound cannot fill a broker past its own."""


@dataclass(frozen=True)
class BrokerConfig(FabricSettings):
    """Broker settings"""

    frontend_bind: str = setting("tcp://127.0.0.1:5555", "endpoint frontends connect to")
    worker_bind: str = setting("tcp://127.0.0.1:5556", "endpoint workers connect to")
    max_queued: int = setting(10_000, "requests waiting for credit before RESOURCE_EXHAUSTED")
    max_queued_bytes: int = setting(
        MAX_QUEUED_BYTES,
        "payload bytes waiting for credit before RESOURCE_EXHAUSTED (0 = no bound)",
    )
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES,
        "largest request or response of any tier (one value for all tiers)",
        env="FABRIC_MAX_MESSAGE_BYTES",
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
    max_models_per_peer: int = setting(
        MAX_MODELS_PER_PEER, "model versions one worker may announce"
    )
    max_config_bytes: int = setting(
        MAX_CONFIG_BYTES, "largest model config one announced version may carry"
    )
    max_catalog_bytes: int = setting(
        MAX_CATALOG_BYTES,
        "bound on the catalog sent to frontends; keep it under their --max-message-bytes",
    )
