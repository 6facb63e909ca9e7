"""``serve-worker``: run one worker process (one per GPU, or one on the CPU)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import WorkerConfig

logger = logging.getLogger("worker")

GIL_SWITCH_INTERVAL_S = 0.0002


def _env(name: str, default: object) -> str:
    return os.environ.get(name, str(default))


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    d = WorkerConfig()
    p = argparse.ArgumentParser(
        prog="serve-worker",
        description="Model worker: loads a Triton-layout model repository and serves it to a "
        "broker. Every flag also reads an environment variable (shown in brackets).",
    )
    p.add_argument(
        "--broker",
        default=_env("WORKER_BROKER", d.broker),
        help="broker endpoint for workers [WORKER_BROKER]",
    )
    p.add_argument(
        "--model-repository",
        default=_env("WORKER_MODEL_REPOSITORY", d.model_repository),
        help="model repository directory [WORKER_MODEL_REPOSITORY]",
    )
    p.add_argument(
        "--device",
        default=_env("WORKER_DEVICE", d.device),
        help="auto, cpu, cuda or cuda:N [WORKER_DEVICE]",
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
        default=int(_env("FABRIC_MAX_MESSAGE_BYTES", d.max_message_bytes)),
        help="[FABRIC_MAX_MESSAGE_BYTES]",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=int(_env("WORKER_TORCH_THREADS", d.torch_threads)),
        help="torch intra-op threads, 0 = default [WORKER_TORCH_THREADS]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("WORKER_METRICS_PORT", d.metrics_port)),
        help="Prometheus port, 0 = off [WORKER_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("WORKER_METRICS_HOST", d.metrics_host),
        help="Prometheus bind address [WORKER_METRICS_HOST]",
    )
    p.add_argument(
        "--poll-interval-s",
        type=float,
        default=float(_env("WORKER_POLL_INTERVAL_S", d.poll_interval_s)),
        help="rescan the repository this often, 0 = only explicit load/unload "
        "[WORKER_POLL_INTERVAL_S]",
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
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="[LOG_LEVEL]")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s worker %(name)s: %(message)s"
    )
    return WorkerConfig(
        broker=a.broker,
        model_repository=a.model_repository,
        device=a.device,
        heartbeat_interval_s=a.heartbeat_interval_s,
        heartbeat_liveness=a.heartbeat_liveness,
        max_message_bytes=a.max_message_bytes,
        torch_threads=a.torch_threads,
        poll_interval_s=a.poll_interval_s,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        curve_server_key=a.curve_server_key,
        curve_client_cert=a.curve_client_cert,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
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
    stops = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stops
        stops += 1
        if stops > 1:
            logger.warning("[shutdown] worker: second signal, exiting now")
            os._exit(1)
        logger.info("[shutdown] worker: %s received", signal.Signals(signum).name)
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
