"""``serve-worker``: run one worker process (one per GPU, or one on the CPU)."""

from __future__ import annotations

import logging
import os
import sys

from fabric import tracing
from fabric.cli import build_config, setup_logging, stop_signals, tune_gc
from fabric.curve import FabricSetupError, exit_on_setup_error, fabric_security
from fabric.malloc import tune_malloc

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
    setup_logging(config.log_level, "worker", config.log_format)
    tune_malloc()
    try:
        fabric_security(config, "worker")
        tracing.configure("worker")
    except FabricSetupError as exc:
        return exit_on_setup_error("serve-worker", exc)
    import torch

    from .devices import DeviceError, cuda_state, host_has_nvidia_gpu, resolve_devices, set_tf32
    from .server import EXIT_DEVICE_LOST, WorkerServer

    try:
        devices = resolve_devices(config.device, cuda_state(), host_has_nvidia_gpu())
    except DeviceError as exc:
        print(f"serve-worker: error: {exc}", file=sys.stderr)
        return 2
    set_tf32(config.allow_tf32, devices)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    # The I/O thread and the compute threads share the GIL; torch releases it around every
    # op and must get it back quickly, or a small model waits out the default 5 ms interval.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    collector = None
    if config.metrics:  # before any model loads: a taken port fails at once
        from fabric.prom import MetricsPortError

        from .metrics import serve_metrics

        try:
            collector, _ = serve_metrics(
                None, config.metrics_host, config.metrics_port, devices.default
            )
        except MetricsPortError as exc:
            print(f"serve-worker: error: {exc}", file=sys.stderr)
            return 2
    server = WorkerServer(config, devices)
    if collector is not None:
        collector.models = server.models
    server.load_repository()
    tune_gc()
    try:
        with stop_signals("worker", server.request_stop):
            server.serve()
    finally:
        tracing.shutdown()
    if server.exit_code == EXIT_DEVICE_LOST:
        # The CUDA context is poisoned: torch's teardown (freeing cached device memory) can
        # abort the process, which would hide this exit status. Everything is answered and
        # the sockets are closed; leave without it.
        logging.shutdown()
        os._exit(server.exit_code)
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
