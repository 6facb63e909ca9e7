"""``make run`` / ``python scripts/run_local.py``: flags, the port check, the banner, then run."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from fabric.curve import init_keys

from .gpus import AUTO, probe_gpus, worker_plan
from .plan import Options, ProcessSpec, Tier, build_plan, duplicate_ports
from .ports import port_in_use
from .runner import GRACE_S, Supervisor


def parse_args(argv: list[str] | None = None) -> tuple[Options, float]:
    p = argparse.ArgumentParser(
        prog="run_local",
        description="Start brokers, workers and frontends on this machine, restart what "
        "crashes, and stop them all in order on Ctrl-C, SIGTERM or SIGHUP.",
    )
    p.add_argument("--models", default="models", help="model repository, served as it is")
    p.add_argument("--host", default="127.0.0.1", help="gRPC address")
    p.add_argument("--port", type=int, default=8001, help="gRPC port, shared by the frontends")
    p.add_argument("--frontends", type=int, default=1)
    p.add_argument("--workers", default=AUTO,
                   help="worker processes; auto = one per visible GPU (worker i on cuda:i), "
                   "one on the CPU without GPUs")  # fmt: skip
    p.add_argument("--brokers", type=int, default=1)
    p.add_argument("--broker-frontend-port", type=int, default=5555,
                   help="first broker's frontend port; broker i adds 2i")  # fmt: skip
    p.add_argument("--broker-worker-port", type=int, default=5556,
                   help="first broker's worker port; broker i adds 2i")  # fmt: skip
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="first Prometheus port (frontend-0), others follow; 0 = off")  # fmt: skip
    p.add_argument("--fabric-keys", default=".fabric-keys",
                   help="CURVE key directory, written on first run (python -m fabric.curve "
                   "init); '' = plain text on loopback")  # fmt: skip
    p.add_argument("--grace-s", type=float, default=GRACE_S,
                   help="per tier, SIGTERM to SIGKILL when stopping")  # fmt: skip
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra flag for every worker, e.g. --worker-arg=--device=cpu")  # fmt: skip
    p.add_argument("--frontend-arg", action="append", default=[], help="extra frontend flag")
    p.add_argument("--routing", default="",
                   help="routing file (YAML) given to every frontend")  # fmt: skip
    p.add_argument("--broker-arg", action="append", default=[], help="extra broker flag")
    a = p.parse_args(argv)
    workers, devices = worker_plan(a.workers, probe_gpus(os.environ))
    options = Options(
        models=str(Path(a.models).resolve()),
        host=a.host,
        port=a.port,
        frontends=a.frontends,
        workers=workers,
        brokers=a.brokers,
        broker_frontend_port=a.broker_frontend_port,
        broker_worker_port=a.broker_worker_port,
        metrics_port=a.metrics_port,
        fabric_keys=str(Path(a.fabric_keys).resolve()) if a.fabric_keys else "",
        extra_worker_args=tuple(a.worker_arg),
        extra_frontend_args=tuple(a.frontend_arg),
        extra_broker_args=tuple(a.broker_arg),
        worker_devices=devices,
        routing=str(Path(a.routing).resolve()) if a.routing else "",
    )
    return options, a.grace_s


def check_ports(plan: list[ProcessSpec]) -> str | None:
    """One line naming the first port that is taken or planned twice; None when all are free."""
    dup = duplicate_ports(plan)
    if dup:
        return f"run: port {dup[0]} would be used twice; move the port ranges apart"
    for spec in plan:
        for use in spec.ports:
            if port_in_use(use.host, use.port):
                return (
                    f"run: port {use.port} ({spec.name} {use.what}, {use.host}) is already in "
                    "use; stop what holds it or choose another port"
                )
    return None


def banner(o: Options, plan: list[ProcessSpec]) -> str:
    fabric = f"CURVE keys in {o.fabric_keys}" if o.fabric_keys else "plain text (loopback)"
    lines = [
        f"fabric: {fabric}",
        f"gRPC (KServe v2) on {o.host}:{o.port} once ready: {o.frontends} frontend(s), "
        f"{o.brokers} broker(s), {o.workers} worker(s); models from {o.models}; Ctrl-C stops",
    ]
    if o.worker_devices:
        lines.append("workers on " + ", ".join(o.worker_devices))
    with_metrics = sorted((s for s in plan if s.metrics_port), key=lambda s: s.metrics_port)
    metrics = [f"{s.name} {s.metrics_port}" for s in with_metrics]
    if metrics:
        lines.append("metrics (http://127.0.0.1:PORT/metrics): " + ", ".join(metrics))
    if importlib.util.find_spec("tritonclient") is None:
        lines.append(
            "client library: not in this environment; "
            f"{sys.executable} -m pip install 'tritonclient[grpc]'"
        )
    return "\n[run] ".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        options, grace_s = parse_args(argv)
        plan = build_plan(options)
    except ValueError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    if not Path(options.models).is_dir():
        print(f"run: model repository {options.models} is not a directory", file=sys.stderr)
        return 2
    if options.routing and not Path(options.routing).is_file():
        print(f"run: routing file {options.routing} is not a file", file=sys.stderr)
        return 2
    if options.fabric_keys:
        init_keys(options.fabric_keys)
    problem = check_ports(plan)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    # Stop order is by tier; the plan lists brokers first so they bind before others connect.
    assert {s.tier for s in plan} == set(Tier)
    return Supervisor(plan, grace_s=grace_s, banner=banner(options, plan)).run()
