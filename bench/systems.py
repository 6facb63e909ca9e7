"""The systems under test of ``make bench``: the bare gRPC server per model and our stack
(broker, one worker, one frontend), started the way users start them, on a model repository
built for the run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.batchstats import batch_snapshot
from bench.lifecycle import Proc, free_port, stop_all
from bench.measure import Target, idle_cpu, idle_rss
from bench.models import MODELS
from bench.ready import sanity_check, wait_ready
from bench.results import StackInfo

SETTLE_S = 1.0
"""Pause after start-up before idle sampling: warm-up and announcements settle first."""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TRACED_RATIO = 0.01
"""The share of calls ``ours_traced`` traces (the frontend samples 1 call in 100)."""
TRACED_ENV = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": str(TRACED_RATIO),
}


def start_bare(log_dir: Path, rnd: int, model: str) -> Target:
    """The bare grpc.aio server answering ``model`` with a fixed response of its output size."""
    port = free_port()
    url = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--model", model]
    proc = Proc("server", [*argv, "--width", str(MODELS[model])], log_dir / f"r{rnd}-bare-{model}")
    try:
        wait_ready(url, [proc], [model])
    except BaseException:
        stop_all([proc])
        raise
    return Target("bare", url, [proc])


def start_ours(
    args: argparse.Namespace,
    log_dir: Path,
    repo: Path,
    models: list[str],
    system: str = "ours",
    fabric_args: tuple[str, ...] = (),
    frontend_args: tuple[str, ...] = (),
    traced: bool = False,
) -> tuple[Target, StackInfo]:
    """Broker, worker, frontend on free loopback ports; waits until every model is ready.
    ``fabric_args`` go to all three (``--fabric-keys DIR``: the fabric with CURVE),
    ``frontend_args`` to the frontend (``--routing FILE``). ``traced``: every tier exports
    OTLP/gRPC to a sink of its own (``bench.otlp_sink``, one of the stack's processes),
    sampling ``TRACED_RATIO`` of the calls."""
    p_front, p_work, p_grpc = free_port(), free_port(), free_port()
    front_bind, work_bind = f"tcp://127.0.0.1:{p_front}", f"tcp://127.0.0.1:{p_work}"
    url = f"127.0.0.1:{p_grpc}"
    py = sys.executable
    procs: list[Proc] = []
    info = StackInfo(logs=str(log_dir))
    t0 = time.monotonic()
    env: dict[str, str] = {}
    try:
        if traced:
            sink_port = free_port()
            sink = [py, "-m", "bench.otlp_sink", "--port", str(sink_port)]
            procs.append(Proc("otlp-sink", sink, log_dir))
            env = {**TRACED_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
        broker = [py, "-m", "broker", "--frontend-bind", front_bind, "--worker-bind", work_bind]
        broker += [*fabric_args, *shlex.split(args.broker_args)]
        procs.append(Proc("broker", broker, log_dir, env=env))
        worker = [py, "-m", "worker", "--broker", work_bind, "--model-repository", str(repo)]
        worker += ["--device", "cpu", "--torch-threads", "1", *fabric_args]
        worker += shlex.split(args.worker_args)
        procs.append(Proc("worker", worker, log_dir, env={**ONE_THREAD, **env}))
        frontend = [py, "-m", "frontend", "--host", "127.0.0.1", "--port", str(p_grpc)]
        frontend += ["--broker", front_bind, *fabric_args, *shlex.split(args.frontend_args)]
        frontend += frontend_args
        procs.append(Proc("frontend", frontend, log_dir, env=env))
        wait_ready(url, procs, models)
    except BaseException:
        info.exit_codes = stop_all(procs)
        raise
    info.ready_s = time.monotonic() - t0
    errs = [e for m in models if (e := sanity_check(url, m, MODELS[m]))]
    info.sanity_error = "; ".join(errs) or None
    info.statistics = batch_snapshot(url, models[0]) is not None
    return Target(system, url, procs, stats=True), info


def start_ours_idle(
    args: argparse.Namespace,
    log_dir: Path,
    rnd: int,
    repo: Path,
    models: list[str],
    system: str = "ours",
    fabric_args: tuple[str, ...] = (),
    frontend_args: tuple[str, ...] = (),
    traced: bool = False,
) -> tuple[Target, StackInfo]:
    """``start_ours``, then its idle CPU and memory once start-up work has settled."""
    target, info = start_ours(
        args,
        log_dir / f"r{rnd}-{system}",
        repo,
        models,
        system,
        fabric_args,
        frontend_args,
        traced,
    )
    try:
        time.sleep(SETTLE_S)
        info.idle_cpu_util = idle_cpu(target.procs, args.idle_seconds)
        info.idle_rss_mb = idle_rss(target.procs)
    except BaseException:
        stop_all(target.procs)
        raise
    return target, info


def build_repo(
    repo: Path, log_dir: Path, models: list[str], optional: frozenset[str]
) -> str | None:
    """Demo models plus ``wide_mlp`` into ``repo``; None on success, else the error.

    Models in ``optional`` may be missing (an older ``worker.demo_models``) without an error."""
    steps = [[sys.executable, "-m", "worker.demo_models", str(repo)]]
    if "wide_mlp" in models:
        steps.append([sys.executable, "-m", "bench.wide_model", str(repo)])
    log = log_dir / "build_models.log"
    with open(log, "ab") as f:
        for argv in steps:
            r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=300)
            if r.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                return f"{shlex.join(argv[1:])} exited {r.returncode}:\n{tail}"
    missing = [m for m in models if m not in optional and not (repo / m).is_dir()]
    return f"models missing from the repository: {missing}" if missing else None
