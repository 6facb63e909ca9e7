"""``serve-frontend``: run one gRPC frontend process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import FrontendConfig
from .server import FrontendServer

logger = logging.getLogger("frontend")


def _env(name: str, default: object) -> str:
    return os.environ.get(name, str(default))


def parse_args(argv: Sequence[str] | None = None) -> FrontendConfig:
    d = FrontendConfig()
    p = argparse.ArgumentParser(
        prog="serve-frontend",
        description="Triton-compatible gRPC frontend (KServe v2 inference.GRPCInferenceService). "
        "Every flag also reads an environment variable (shown in brackets).",
    )
    p.add_argument("--host", default=_env("FRONTEND_HOST", d.host), help="[FRONTEND_HOST]")
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("FRONTEND_PORT", d.port)),
        help="gRPC port [FRONTEND_PORT]",
    )
    p.add_argument(
        "--broker",
        default=_env("FRONTEND_BROKERS", ",".join(d.brokers)),
        help="broker endpoint(s), comma separated [FRONTEND_BROKERS]",
    )
    p.add_argument(
        "--heartbeat-interval-s",
        type=float,
        default=float(_env("FABRIC_HEARTBEAT_INTERVAL_S", d.heartbeat_interval_s)),
        help="[FABRIC_HEARTBEAT_INTERVAL_S]",
    )
    p.add_argument(
        "--heartbeat-liveness",
        type=int,
        default=int(_env("FABRIC_HEARTBEAT_LIVENESS", d.heartbeat_liveness)),
        help="[FABRIC_HEARTBEAT_LIVENESS]",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(_env("FRONTEND_MAX_MESSAGE_BYTES", d.max_message_bytes)),
        help="largest gRPC message accepted or sent; larger ones get "
        "RESOURCE_EXHAUSTED [FRONTEND_MAX_MESSAGE_BYTES]",
    )
    p.add_argument(
        "--default-timeout-s",
        type=float,
        default=float(_env("FRONTEND_DEFAULT_TIMEOUT_S", d.default_timeout_s)),
        help="deadline for calls that set none [FRONTEND_DEFAULT_TIMEOUT_S]",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=int(_env("FRONTEND_MAX_RETRIES", d.max_retries)),
        help="retries of UNAVAILABLE failures [FRONTEND_MAX_RETRIES]",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=int(_env("FRONTEND_MAX_IN_FLIGHT", d.max_in_flight)),
        help="requests this frontend holds at once; more get RESOURCE_EXHAUSTED "
        "[FRONTEND_MAX_IN_FLIGHT]",
    )
    p.add_argument(
        "--tls-cert-file",
        default=_env("FRONTEND_TLS_CERT_FILE", d.tls_cert_file),
        help="PEM certificate chain; with --tls-key-file serves TLS [FRONTEND_TLS_CERT_FILE]",
    )
    p.add_argument(
        "--tls-key-file",
        default=_env("FRONTEND_TLS_KEY_FILE", d.tls_key_file),
        help="PEM private key [FRONTEND_TLS_KEY_FILE]",
    )
    p.add_argument(
        "--tls-client-ca-file",
        default=_env("FRONTEND_TLS_CLIENT_CA_FILE", d.tls_client_ca_file),
        help="PEM CA; when set, clients must present a certificate it signed "
        "(mTLS) [FRONTEND_TLS_CLIENT_CA_FILE]",
    )
    p.add_argument(
        "--curve-server-key",
        default=_env("FABRIC_CURVE_SERVER_KEY", d.curve_server_key),
        help="broker's CURVE public .key file [FABRIC_CURVE_SERVER_KEY]",
    )
    p.add_argument(
        "--curve-client-cert",
        default=_env("FABRIC_CURVE_CLIENT_CERT", d.curve_client_cert),
        help="this process's CURVE .key_secret file [FABRIC_CURVE_CLIENT_CERT]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("FRONTEND_METRICS_PORT", d.metrics_port)),
        help="Prometheus port, 0 = off [FRONTEND_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("FRONTEND_METRICS_HOST", d.metrics_host),
        help="Prometheus bind address [FRONTEND_METRICS_HOST]",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="[LOG_LEVEL]")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(),
        format="%(asctime)s %(levelname)s frontend %(name)s: %(message)s",
    )
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
    )


async def _serve(config: FrontendConfig) -> None:
    server = FrontendServer(config)
    loop = asyncio.get_running_loop()
    stops = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stops
        stops += 1
        if stops > 1:
            logger.warning("[shutdown] frontend: second signal, exiting now")
            os._exit(1)
        logger.info("[shutdown] frontend: %s received", sig.name)
        server.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
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
