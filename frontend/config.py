"""Frontend settings, built once in ``__main__`` from flags and environment (``fabric.cli``)."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.cli import CurveClientSettings, setting
from fabric.sockets import MAX_MESSAGE_BYTES

from .byte_admission import DEFAULT_MAX_IN_FLIGHT_BYTES

ENV_PREFIX = "FRONTEND"


@dataclass(frozen=True)
class FrontendConfig(CurveClientSettings):
    """Frontend settings"""

    host: str = setting("127.0.0.1", "address to serve gRPC on")
    port: int = setting(8001, "gRPC port")
    reuse_port: bool = setting(
        False, "share the gRPC port with other frontends (SO_REUSEPORT), as make run does"
    )
    brokers: tuple[str, ...] = setting(
        ("tcp://127.0.0.1:5555",), "broker endpoint(s), comma separated", flag="--broker"
    )
    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES,
        "largest gRPC message accepted or sent; larger get RESOURCE_EXHAUSTED (one value for "
        "all tiers)",
        env="FABRIC_MAX_MESSAGE_BYTES",
    )
    default_timeout_s: float = setting(60.0, "deadline for calls that set none")
    max_retries: int = setting(2, "retries of UNAVAILABLE failures")
    max_in_flight: int = setting(20_000, "requests held at once; more get RESOURCE_EXHAUSTED")
    max_in_flight_bytes: int = setting(
        DEFAULT_MAX_IN_FLIGHT_BYTES,
        "request bytes held by calls in flight; a call that would pass it gets "
        "RESOURCE_EXHAUSTED (0 = no bound)",
    )
    retry_budget_ratio: float = setting(0.1, "retries may add at most this fraction of extra load")
    broker_wait_s: float = setting(
        5.0,
        "calls that arrive while no live broker lists a worker (before the first answers, "
        "after all went silent, or while their workers join or restart) wait for one; after "
        "this long without one, calls fail at once again (0: never wait)",
    )
    shutdown_grace_s: float = setting(5.0, "longest wait for calls in flight on shutdown")
    control_timeout_s: float = setting(120.0, "longest wait for a repository load or unload call")
    server_name: str = setting(
        "triton", "server name in ServerMetadata replies (Triton's, which scripts check for)"
    )
    model_control_mode: str = setting(
        "none",
        "none | poll | explicit, as Triton's: RepositoryModelLoad/Unload only in explicit",
        env="MODEL_CONTROL_MODE",
        choices=("none", "poll", "explicit"),
    )
    grpc_restricted_protocol: str = setting(
        "",
        "Triton's <protocols>:<key>=<value> (several separated by ';'): those RPC groups need "
        "the header triton-grpc-protocol-<key> with that value",
    )
    tls_cert_file: str = setting("", "PEM certificate chain; with --tls-key-file serves TLS")
    tls_key_file: str = setting("", "PEM private key")
    tls_client_ca_file: str = setting(
        "", "PEM CA; when set, clients must present a certificate it signed (mTLS)"
    )
    stream_max_pending: int = setting(
        64, "per stream: requests in flight plus responses not yet sent; then reading pauses"
    )
    stream_idle_timeout_s: float = setting(
        300.0, "end a stream with no request and nothing in flight for this long; 0 = never"
    )
    max_concurrent_streams: int = setting(
        1024, "calls open at once on one client connection (HTTP/2 streams)"
    )
    max_concurrent_rpcs: int = setting(
        0,
        "calls open at once on this frontend, all connections; more are refused by gRPC before "
        "their message is read (bounds received bytes; BDP probing off, slower on large "
        "messages); 0 = no limit",
    )
    routing_file: str = setting(
        "",
        "routing file (YAML): canary, A/B, sticky and shadow routing; watched for edits",
        flag="--routing",
    )
