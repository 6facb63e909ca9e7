"""``serve-broker``: run one broker process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import BrokerConfig
from .server import BrokerServer

logger = logging.getLogger("broker")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str] | None = None) -> BrokerConfig:
    d = BrokerConfig()
    p = argparse.ArgumentParser(
        prog="serve-broker",
        description="ZeroMQ broker between gRPC frontends and model workers. Every flag also "
        "reads an environment variable (shown in brackets).",
    )
    p.add_argument(
        "--frontend-bind",
        default=_env("BROKER_FRONTEND_BIND", d.frontend_bind),
        help="endpoint frontends connect to [BROKER_FRONTEND_BIND]",
    )
    p.add_argument(
        "--worker-bind",
        default=_env("BROKER_WORKER_BIND", d.worker_bind),
        help="endpoint workers connect to [BROKER_WORKER_BIND]",
    )
    p.add_argument(
        "--heartbeat-interval-s",
        type=float,
        default=float(_env("FABRIC_HEARTBEAT_INTERVAL_S", str(d.heartbeat_interval_s))),
        help="heartbeat period [FABRIC_HEARTBEAT_INTERVAL_S]",
    )
    p.add_argument(
        "--heartbeat-liveness",
        type=int,
        default=int(_env("FABRIC_HEARTBEAT_LIVENESS", str(d.heartbeat_liveness))),
        help="missed heartbeats before a peer is dead [FABRIC_HEARTBEAT_LIVENESS]",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=int(_env("BROKER_MAX_QUEUED", str(d.max_queued))),
        help="requests waiting for credit before RESOURCE_EXHAUSTED [BROKER_MAX_QUEUED]",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(_env("FABRIC_MAX_MESSAGE_BYTES", str(d.max_message_bytes))),
        help="largest ZeroMQ message accepted [FABRIC_MAX_MESSAGE_BYTES]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("BROKER_METRICS_PORT", str(d.metrics_port))),
        help="Prometheus port, 0 = off [BROKER_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("BROKER_METRICS_HOST", d.metrics_host),
        help="Prometheus bind address [BROKER_METRICS_HOST]",
    )
    p.add_argument(
        "--curve-secret-cert",
        default=_env("BROKER_CURVE_SECRET_CERT", d.curve_secret_cert),
        help="broker's CURVE .key_secret file; turns on encryption [BROKER_CURVE_SECRET_CERT]",
    )
    p.add_argument(
        "--curve-clients-dir",
        default=_env("BROKER_CURVE_CLIENTS_DIR", d.curve_clients_dir),
        help="directory of allowed client .key files; empty = any client "
        "[BROKER_CURVE_CLIENTS_DIR]",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="[LOG_LEVEL]")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s broker %(name)s: %(message)s"
    )
    return BrokerConfig(
        frontend_bind=a.frontend_bind,
        worker_bind=a.worker_bind,
        heartbeat_interval_s=a.heartbeat_interval_s,
        heartbeat_liveness=a.heartbeat_liveness,
        max_queued=a.max_queued,
        max_message_bytes=a.max_message_bytes,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        curve_secret_cert=a.curve_secret_cert,
        curve_clients_dir=a.curve_clients_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    server = BrokerServer(config)
    server.bind()
    if config.metrics_port:
        server.metrics.serve(config.metrics_host, config.metrics_port)
    stops = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stops
        stops += 1
        if stops > 1:
            logger.warning("[shutdown] broker: second signal, exiting now")
            os._exit(1)
        logger.info("[shutdown] broker: %s received", signal.Signals(signum).name)
        server.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
