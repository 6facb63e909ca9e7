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
    tls_cert_file: str = ""  # PEM; with tls_key_file turns TLS on
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # PEM CA: clients must present a certificate it signed (mTLS)
    curve_server_key: str = ""  # broker's CURVE .key file: turns CURVE on
    curve_client_cert: str = ""  # this frontend's .key_secret (when the broker allow-lists)
    stream_max_pending: int = 64  # per ModelStreamInfer: requests in flight + responses unsent
    stream_idle_timeout_s: float = 300.0  # no request, nothing in flight: end it; 0 = never
    max_concurrent_streams: int = 1024  # HTTP/2 streams (calls) per client connection
