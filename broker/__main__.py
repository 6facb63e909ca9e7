"""``serve-broker``: run one broker process."""

from __future__ import annotations

import sys

from fabric.cli import (
    Flags,
    add_fabric_flags,
    add_metrics_flags,
    setup_logging,
    stop_signals,
    tune_gc,
)

from .config import BrokerConfig
from .server import BrokerServer


def parse_args(argv: list[str] | None = None) -> BrokerConfig:
    d = BrokerConfig()
    f = Flags("serve-broker", "ZeroMQ broker between gRPC frontends and model workers.")
    f.add("--frontend-bind", "BROKER_FRONTEND_BIND", d.frontend_bind,
          "endpoint frontends connect to")  # fmt: skip
    f.add("--worker-bind", "BROKER_WORKER_BIND", d.worker_bind, "endpoint workers connect to")
    f.add("--max-queued", "BROKER_MAX_QUEUED", d.max_queued,
          "requests waiting for credit before RESOURCE_EXHAUSTED", int)  # fmt: skip
    f.add("--max-message-bytes", "FABRIC_MAX_MESSAGE_BYTES", d.max_message_bytes,
          "largest ZeroMQ message accepted", int)  # fmt: skip
    f.add("--curve-secret-cert", "BROKER_CURVE_SECRET_CERT", d.curve_secret_cert,
          "broker's CURVE .key_secret file; turns on encryption")  # fmt: skip
    f.add("--curve-clients-dir", "BROKER_CURVE_CLIENTS_DIR", d.curve_clients_dir,
          "directory of allowed client .key files; empty = any client")  # fmt: skip
    f.add("--max-models-per-peer", "BROKER_MAX_MODELS_PER_PEER", d.max_models_per_peer,
          "model versions one worker may announce", int)  # fmt: skip
    f.add("--max-config-bytes", "BROKER_MAX_CONFIG_BYTES", d.max_config_bytes,
          "largest model config one announced version may carry", int)  # fmt: skip
    f.add("--max-catalog-bytes", "BROKER_MAX_CATALOG_BYTES", d.max_catalog_bytes,
          "bound on the catalog sent to frontends; keep it under their "
          "--max-message-bytes", int)  # fmt: skip
    add_metrics_flags(f, "BROKER", d)
    add_fabric_flags(f, d)
    a = f.parse(argv)
    setup_logging(a.log_level, "broker")
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
        max_models_per_peer=a.max_models_per_peer,
        max_config_bytes=a.max_config_bytes,
        max_catalog_bytes=a.max_catalog_bytes,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    server = BrokerServer(config)
    server.bind()
    if config.metrics_port:
        server.metrics.serve(config.metrics_host, config.metrics_port)
    tune_gc()
    with stop_signals("broker", server.request_stop):
        server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
