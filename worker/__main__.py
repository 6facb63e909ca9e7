"""``serve-worker``: run one worker process (one per GPU, or one on the CPU)."""

from __future__ import annotations

import sys

from fabric.cli import (
    Flags,
    add_curve_client_flags,
    add_fabric_flags,
    add_metrics_flags,
    setup_logging,
    stop_signals,
    tune_gc,
)

from .config import WorkerConfig

GIL_SWITCH_INTERVAL_S = 0.0002


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    d = WorkerConfig()
    f = Flags(
        "serve-worker",
        "Model worker: loads a Triton-layout model repository and serves it to a broker.",
    )
    f.add("--broker", "WORKER_BROKERS", ",".join(d.brokers),
          "broker endpoint(s) for workers, comma separated; the worker registers with each "
          "and splits its credit between them")  # fmt: skip
    f.add("--model-repository", "WORKER_MODEL_REPOSITORY", d.model_repository,
          "model repository directory")  # fmt: skip
    f.add("--device", "WORKER_DEVICE", d.device, "auto, cpu, cuda or cuda:N")
    f.add("--torch-threads", "WORKER_TORCH_THREADS", d.torch_threads,
          "torch intra-op threads, 0 = torch's default", int)  # fmt: skip
    f.add("--inline-compute-ms", "WORKER_INLINE_COMPUTE_MS", d.inline_compute_ms,
          "run a single-instance CPU model on the I/O thread (no thread hand-off per batch) "
          "while its batches take less than this; 0 = always a compute thread", float)  # fmt: skip
    f.add("--poll-interval-s", "WORKER_POLL_INTERVAL_S", d.poll_interval_s,
          "rescan the repository this often, 0 = only explicit load/unload", float)  # fmt: skip
    f.add("--max-message-bytes", "FABRIC_MAX_MESSAGE_BYTES", d.max_message_bytes,
          "largest ZeroMQ message accepted", int)  # fmt: skip
    add_curve_client_flags(f, d)
    add_metrics_flags(f, "WORKER", d)
    add_fabric_flags(f, d)
    a = f.parse(argv)
    setup_logging(a.log_level, "worker")
    return WorkerConfig(
        brokers=tuple(b.strip() for b in a.broker.split(",") if b.strip()),
        model_repository=a.model_repository,
        device=a.device,
        heartbeat_interval_s=a.heartbeat_interval_s,
        heartbeat_liveness=a.heartbeat_liveness,
        max_message_bytes=a.max_message_bytes,
        torch_threads=a.torch_threads,
        inline_compute_ms=a.inline_compute_ms,
        poll_interval_s=a.poll_interval_s,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        curve_server_key=a.curve_server_key,
        curve_client_cert=a.curve_client_cert,
    )


def main(argv: list[str] | None = None) -> int:
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
    tune_gc()
    with stop_signals("worker", server.request_stop):
        server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
