"""``serve-broker``: run one broker process."""

from __future__ import annotations

import sys

from fabric import tracing
from fabric.cli import build_config, setup_logging, stop_signals, tune_gc
from fabric.curve import FabricSetupError, exit_on_setup_error
from fabric.malloc import tune_malloc
from fabric.prom import MetricsPortError

from .config import ENV_PREFIX, BrokerConfig
from .server import BrokerServer


def parse_args(argv: list[str] | None = None) -> BrokerConfig:
    return build_config(
        BrokerConfig,
        argv,
        prog="serve-broker",
        description="ZeroMQ broker between gRPC frontends and model workers.",
        env_prefix=ENV_PREFIX,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level, "broker", config.log_format)
    tune_malloc()
    try:
        tracing.configure("broker")  # before the server: its dispatcher asks whether to trace
        server = BrokerServer(config)
    except FabricSetupError as exc:
        return exit_on_setup_error("serve-broker", exc)
    if config.metrics:
        try:
            server.metrics.serve(config.metrics_host, config.metrics_port)
        except MetricsPortError as exc:
            print(f"serve-broker: error: {exc}", file=sys.stderr)
            return 2
    server.bind()
    tune_gc()
    try:
        with stop_signals("broker", server.request_stop):
            server.serve()
    finally:
        tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
