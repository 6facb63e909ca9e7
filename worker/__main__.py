"""``serve-worker``: run one worker process (one per GPU, or one on the CPU)."""

from __future__ import annotations

import sys

from fabric import tracing
from fabric.cli import build_config, setup_logging, stop_signals, tune_gc
from fabric.curve import FabricSetupError, exit_on_setup_error, fabric_security

from .config import ENV_PREFIX, WorkerConfig

GIL_SWITCH_INTERVAL_S = 0.0002


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    return build_config(
        WorkerConfig,
        argv,
        prog="serve-worker",
        description="Model worker: loads a Triton-layout model repository and serves it to a "
        "broker.",
        env_prefix=ENV_PREFIX,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level, "worker")
    try:
        fabric_security(config, "worker")
        tracing.configure("worker")
    except FabricSetupError as exc:
        return exit_on_setup_error("serve-worker", exc)
    import torch

    from .server import WorkerServer

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    # The I/O thread and the compute threads share the GIL; torch releases it around every
    # op and must get it back quickly, or a small model waits out the default 5 ms interval.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server = WorkerServer(config)
    server.load_repository()
    if config.metrics_port:
        from .metrics import serve_metrics

        serve_metrics(server.models, config.metrics_host, config.metrics_port)
    tune_gc()
    try:
        with stop_signals("worker", server.request_stop):
            server.serve()
    finally:
        tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
