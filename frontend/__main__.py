"""``serve-frontend``: run one gRPC frontend process."""

from __future__ import annotations

import asyncio
import signal
import sys

from fabric.cli import (
    Flags,
    StopSignals,
    add_curve_client_flags,
    add_fabric_flags,
    add_metrics_flags,
    setup_logging,
    tune_gc,
)

from .config import FrontendConfig
from .server import FrontendServer


def parse_args(argv: list[str] | None = None) -> FrontendConfig:
    d = FrontendConfig()
    f = Flags(
        "serve-frontend",
        "Triton-compatible gRPC frontend (KServe v2 inference.GRPCInferenceService).",
    )
    f.add("--host", "FRONTEND_HOST", d.host, "address to serve gRPC on")
    f.add("--port", "FRONTEND_PORT", d.port, "gRPC port", int)
    f.add("--broker", "FRONTEND_BROKERS", ",".join(d.brokers),
          "broker endpoint(s), comma separated")  # fmt: skip
    f.add("--max-message-bytes", "FRONTEND_MAX_MESSAGE_BYTES", d.max_message_bytes,
          "largest gRPC message accepted or sent; larger get RESOURCE_EXHAUSTED", int)  # fmt: skip
    f.add("--default-timeout-s", "FRONTEND_DEFAULT_TIMEOUT_S", d.default_timeout_s,
          "deadline for calls that set none", float)  # fmt: skip
    f.add("--max-retries", "FRONTEND_MAX_RETRIES", d.max_retries,
          "retries of UNAVAILABLE failures", int)  # fmt: skip
    f.add("--max-in-flight", "FRONTEND_MAX_IN_FLIGHT", d.max_in_flight,
          "requests held at once; more get RESOURCE_EXHAUSTED", int)  # fmt: skip
    f.add("--tls-cert-file", "FRONTEND_TLS_CERT_FILE", d.tls_cert_file,
          "PEM certificate chain; with --tls-key-file serves TLS")  # fmt: skip
    f.add("--tls-key-file", "FRONTEND_TLS_KEY_FILE", d.tls_key_file, "PEM private key")
    f.add("--tls-client-ca-file", "FRONTEND_TLS_CLIENT_CA_FILE", d.tls_client_ca_file,
          "PEM CA; when set, clients must present a certificate it signed (mTLS)")  # fmt: skip
    f.add("--stream-max-pending", "FRONTEND_STREAM_MAX_PENDING", d.stream_max_pending,
          "per stream: requests in flight plus responses not yet sent; then reading "
          "pauses", int)  # fmt: skip
    f.add("--stream-idle-timeout-s", "FRONTEND_STREAM_IDLE_TIMEOUT_S", d.stream_idle_timeout_s,
          "end a stream with no request and nothing in flight for this long; 0 = never",
          float)  # fmt: skip
    f.add("--max-concurrent-streams", "FRONTEND_MAX_CONCURRENT_STREAMS",
          d.max_concurrent_streams, "calls open at once on one client connection", int)  # fmt: skip
    add_curve_client_flags(f, d)
    add_metrics_flags(f, "FRONTEND", d)
    add_fabric_flags(f, d)
    a = f.parse(argv)
    setup_logging(a.log_level, "frontend")
    return FrontendConfig(
        host=a.host,
        port=a.port,
        brokers=tuple(b.strip() for b in a.broker.split(",") if b.strip()),
        heartbeat_interval_s=a.heartbeat_interval_s,
        heartbeat_liveness=a.heartbeat_liveness,
        max_message_bytes=a.max_message_bytes,
        default_timeout_s=a.default_timeout_s,
        max_retries=a.max_retries,
        max_in_flight=a.max_in_flight,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        tls_cert_file=a.tls_cert_file,
        tls_key_file=a.tls_key_file,
        tls_client_ca_file=a.tls_client_ca_file,
        curve_server_key=a.curve_server_key,
        curve_client_cert=a.curve_client_cert,
        stream_max_pending=a.stream_max_pending,
        stream_idle_timeout_s=a.stream_idle_timeout_s,
        max_concurrent_streams=a.max_concurrent_streams,
    )


async def _serve(config: FrontendConfig) -> None:
    server = FrontendServer(config)
    loop = asyncio.get_running_loop()
    on_signal = StopSignals("frontend", server.request_stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.start()
        tune_gc()
        await server.run_until_stopped()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
