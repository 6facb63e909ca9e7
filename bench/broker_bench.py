"""One broker process in isolation: routed requests/s, CPU per request, memory.

Starts ``python -m broker`` as a subprocess and drives it with fake frontends and fake workers
written directly against ``fabric/protocol.py`` (each role a subprocess of this module, several
DEALER sockets per process):

- fake workers announce ``mlp`` (its real config.pbtxt) with a capacity in READY, answer every
  REQUEST with REPLY ``[header, frontend identity, ModelInferResponse]`` and heartbeat;
- fake frontends keep a window of requests (a real ~1 KiB ModelInferRequest each) outstanding per
  socket and send a new one for every reply.

Measured, each against a fresh broker:

1. **routing throughput**, twice: peers sending one ZeroMQ message per request, then coalescing
   every request they have per wake-up into one BATCH (``fabric.protocol.coalesce``). Reported:
   requests/s routed (replies the frontends got in the window), the broker's CPU seconds per
   1,000 requests and so requests per broker core-second (goal: ≥ 30,000/s on one core), its
   wake-ups per request and CPU use of the fake peers (they share the other core);
2. **broker memory with 10,000 queued requests**: a fake worker with capacity 4 that never
   replies, 10,004 requests sent; RSS once ``fabric_broker_queue_depth`` (its Prometheus
   endpoint) reads 10,000, against its idle RSS (goal ≤ 80 MB);
3. **frontend memory under load**: the real frontend (``python -m frontend``) in front of the
   broker and a fake worker that answers at once, driven by ``bench.loadgen`` at concurrency 128;
   its RSS and peak RSS (goal ≤ 120 MB), throughput and CPU per request per tier.

Writes ``<out>/broker-<stamp>.json`` and ``<out>/broker-latest.md`` and regenerates
``<out>/latest.md``.

    python -m bench.broker_bench [--duration 5] [--warmup 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.broker_results import (
    BrokerReport,
    FrontendMemory,
    QueuedMemory,
    Routing,
    to_json,
)
from bench.broker_roles import (
    MODEL,
    fake_frontend,
    fake_worker,
    messages,
    request_payload,
    role,
    role_result,
    sleep_until,
    start_broker,
    wait_gauge,
)
from bench.cli import git_dirty, git_sha
from bench.lifecycle import Proc, StackError, free_port, stop_all
from bench.markdown import fmt, git_text, per_tier
from bench.measure import Target, measure
from bench.procs import machine_busy_s, proc_mem_mb, tree_cpu_s, tree_wakeups
from bench.ready import wait_ready
from bench.results import Measurement


# --------------------------------------------------------------------------- measurements
def routing(args: argparse.Namespace, log_dir: Path, coalesce: bool) -> Routing:
    """Fake frontends and workers through a fresh broker; its CPU per routed request."""
    mode = "coalesced" if coalesce else "one message per request"
    d = log_dir / ("routing-coalesced" if coalesce else "routing-single")
    rec = Routing(mode=mode, coalesce=coalesce)
    procs: list[Proc] = []
    try:
        broker, fe_ep, wk_ep, mport = start_broker(d, "broker")
        procs.append(broker)
        flag = ["--coalesce"] if coalesce else []
        workers = role(
            [
                "--role",
                "worker",
                "--endpoint",
                wk_ep,
                "--n",
                str(args.workers),
                "--capacity",
                str(args.capacity),
                *flag,
            ],
            d,
            "fake-workers",
        )
        procs.append(workers)
        got = wait_gauge(mport, "fabric_broker_workers", args.workers, 15.0)
        if got is None or got < args.workers:
            raise StackError(f"fake workers did not register (gauge {got})")
        start_at = time.monotonic() + 1.5 + args.warmup
        frontends = role(
            [
                "--role",
                "frontend",
                "--endpoint",
                fe_ep,
                "--n",
                str(args.frontends),
                "--window",
                str(args.window),
                "--start-at",
                repr(start_at),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
                *flag,
            ],
            d,
            "fake-frontends",
        )
        procs.append(frontends)
        sleep_until(start_at)
        busy0 = machine_busy_s()
        cpu0 = {p.name: tree_cpu_s(p.pid) for p in procs}
        wake0 = tree_wakeups(broker.pid)
        sleep_until(start_at + args.duration)
        busy1 = machine_busy_s()
        cpu1 = {p.name: tree_cpu_s(p.pid) for p in procs}
        wake1 = tree_wakeups(broker.pid)
        rec.broker_rss_mb = proc_mem_mb(broker.pid)
        fres = role_result(frontends)
        workers.stop()
        rec.frontends, rec.workers = fres, role_result(workers, 5.0)
        if "error" in fres:
            raise StackError(fres["error"])
        n = fres["replies_in_window"]
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        ours = sum(cpu.values())
        rec.duration_s = args.duration
        rec.routed_per_s = n / args.duration
        rec.errors = fres["errors"]
        rec.error_sample = fres.get("sample")
        rec.broker_cpu_util = cpu["broker"] / args.duration
        rec.broker_cpu_s_per_1k = cpu["broker"] / n * 1000 if n else None
        rec.per_broker_core_s = n / cpu["broker"] if cpu["broker"] else None
        rec.broker_wakeups_per_req = (wake1 - wake0) / n if n else None
        rec.fake_frontends_cpu_util = cpu["fake-frontends"] / args.duration
        rec.fake_workers_cpu_util = cpu["fake-workers"] / args.duration
        rec.foreign_cpu_util = max(0.0, (busy1 - busy0) - ours) / args.duration
    except StackError as exc:
        rec.error = str(exc)
    finally:
        stop_all(procs)
    return rec


def queued_memory(args: argparse.Namespace, log_dir: Path) -> QueuedMemory:
    """Broker RSS with ``args.queued`` requests waiting for credit."""
    import zmq

    from fabric.protocol import (
        PROTOCOL_TAG,
        TYPE_FRAME,
        MsgType,
        ReplyHeader,
        RequestHeader,
        coalesce,
        decode_header,
        encode_header,
    )
    from fabric.sockets import make_socket

    d = log_dir / "queued"
    rec = QueuedMemory(queued_target=args.queued, capacity=4)
    procs: list[Proc] = []
    ctx: zmq.Context = zmq.Context()
    sock = None
    try:
        broker, fe_ep, wk_ep, mport = start_broker(
            d, "broker", ["--max-queued", str(max(args.queued, 10_000))]
        )
        procs.append(broker)
        procs.append(
            role(
                [
                    "--role",
                    "worker",
                    "--endpoint",
                    wk_ep,
                    "--n",
                    "1",
                    "--capacity",
                    "4",
                    "--no-reply",
                ],
                d,
                "fake-worker",
            )
        )
        wait_gauge(mport, "fabric_broker_workers", 1, 15.0)
        time.sleep(1.0)
        rec.idle_rss_mb = proc_mem_mb(broker.pid)
        sock = make_socket(ctx, zmq.DEALER, identity=b"fake-frontend-queue")
        sock.connect(fe_ep)
        payload = request_payload()
        rec.payload_bytes = len(payload)
        t_req = TYPE_FRAME[MsgType.REQUEST]
        total = args.queued + 4
        msgs = [
            [PROTOCOL_TAG, t_req, encode_header(RequestHeader(i + 1, MODEL, "", 0)), payload]
            for i in range(total)
        ]
        for k in range(0, total, 100):
            sock.send_multipart(coalesce(msgs[k : k + 100]))
        key = f'fabric_broker_queue_depth{{model="{MODEL}",version="1"}}'
        depth = wait_gauge(mport, key, args.queued, 30.0)
        rec.queue_depth = depth
        time.sleep(0.5)
        rec.queued_rss_mb = proc_mem_mb(broker.pid)
        rejected = 0
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            for m in messages(frames):
                if m[0] == TYPE_FRAME[MsgType.REPLY]:
                    h = decode_header(MsgType.REPLY, m[1])
                    if isinstance(h, ReplyHeader) and h.status != "OK":
                        rejected += 1
        rec.rejected = rejected
        rss = rec.queued_rss_mb.get("VmRSS")
        idle = rec.idle_rss_mb.get("VmRSS")
        if rss is not None and idle is not None and depth:
            rec.bytes_per_queued = (rss - idle) * 1024 * 1024 / depth
    except StackError as exc:
        rec.error = str(exc)
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
        stop_all(procs)
    return rec


def frontend_memory(args: argparse.Namespace, log_dir: Path) -> FrontendMemory:
    """The real frontend with the broker and an instant fake worker, under loadgen at c=128."""
    d = log_dir / "frontend"
    rec = FrontendMemory(concurrency=args.frontend_concurrency)
    procs: list[Proc] = []
    try:
        broker, fe_ep, wk_ep, _ = start_broker(d, "broker")
        procs.append(broker)
        procs.append(
            role(
                [
                    "--role",
                    "worker",
                    "--endpoint",
                    wk_ep,
                    "--n",
                    "1",
                    "--capacity",
                    "256",
                    "--coalesce",
                ],
                d,
                "fake-worker",
            )
        )
        port = free_port()
        procs.append(
            Proc(
                "frontend",
                [
                    sys.executable,
                    "-m",
                    "frontend",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--broker",
                    fe_ep,
                ],
                d,
            )
        )
        url = f"127.0.0.1:{port}"
        wait_ready(url, procs, [MODEL])
        rec.idle_rss_mb = proc_mem_mb(procs[-1].pid)
        target = Target("fake-worker stack", url, procs)
        rec.load = measure(target, MODEL, args.frontend_concurrency, args)
        rec.frontend_rss_mb = proc_mem_mb(procs[-1].pid)
    except StackError as exc:
        rec.error = str(exc)
    finally:
        stop_all(procs)
    return rec


# --------------------------------------------------------------------------- report
def pct(x: float | None) -> str:
    """A fraction of one core as a whole percentage."""
    return fmt(None if x is None else x * 100, ".0f") + "%"


def routing_row(r: Routing) -> str:
    if r.error is not None:
        return f"| {r.mode} | failed: {r.error[:200]} |" + " |" * 8
    return (
        f"| {r.mode} | {fmt(r.routed_per_s, ',.0f')} | {pct(r.broker_cpu_util)} "
        f"| {fmt(r.broker_cpu_s_per_1k, '.4f')} | {fmt(r.per_broker_core_s, ',.0f')} "
        f"| {fmt(r.broker_wakeups_per_req, '.2f')} "
        f"| {pct(r.fake_frontends_cpu_util)} | {pct(r.fake_workers_cpu_util)} "
        f"| {pct(r.foreign_cpu_util)} | {r.errors} |"
    )


def queued_line(q: QueuedMemory) -> str:
    if q.error is not None:
        return f"- **Broker with queued requests**: failed: {q.error}"
    return (
        f"- **Broker RSS with {fmt(q.queue_depth, ',.0f')} queued requests** "
        f"(fake worker capacity {q.capacity}, never replies; {q.payload_bytes} B payloads): "
        f"{fmt(q.queued_rss_mb.get('VmRSS'), '.1f')} MB (peak "
        f"{fmt(q.queued_rss_mb.get('VmHWM'), '.1f')} MB), idle "
        f"{fmt(q.idle_rss_mb.get('VmRSS'), '.1f')} MB, about "
        f"{fmt(q.bytes_per_queued, ',.0f')} B per queued request; "
        f"{q.rejected} rejected. Goal ≤ 80 MB."
    )


def frontend_line(f: FrontendMemory) -> str:
    if f.error is not None:
        return f"- **Frontend under load**: failed: {f.error[:500]}"
    load = f.load or Measurement(system="", model=MODEL, concurrency=f.concurrency)
    return (
        f"- **Frontend RSS under load** (real frontend, broker, fake worker answering at once; "
        f"loadgen c={f.concurrency}): {fmt(f.frontend_rss_mb.get('VmRSS'), '.1f')} MB "
        f"at the end (peak {fmt(f.frontend_rss_mb.get('VmHWM'), '.1f')} MB), idle "
        f"{fmt(f.idle_rss_mb.get('VmRSS'), '.1f')} MB. Goal ≤ 120 MB. Under that load: "
        f"{fmt(load.throughput, ',.0f')} req/s, p50 {fmt(load.p50_ms, '.2f')}"
        f" ms, p99 {fmt(load.p99_ms, '.2f')} ms, {load.errors} errors, CPU s "
        f"per 1k req {per_tier(load.cpu_s_per_1k, '.3f')}, wake-ups/req "
        f"{per_tier(load.wakeups_per_req, '.1f')}, other CPU "
        f"{pct(load.foreign_cpu_util or 0.0)}."
    )


def to_markdown(report: BrokerReport) -> str:
    """The ``broker-latest.md`` section."""
    meta = report.meta
    lines = [
        "## One broker process in isolation (`python -m bench.broker_bench`)",
        "",
        f"Run {meta['timestamp']} (UTC), {git_text(meta)}, {meta['cpus']} CPUs, "
        f"{meta['duration_s']:g} s measured after {meta['warmup_s']:g} s warm-up; "
        f"{meta['frontends']} fake frontend sockets x {meta['window']} requests in flight, "
        f"{meta['workers']} fake worker sockets x capacity {meta['capacity']}, in two "
        "processes beside the broker (they share the other core). Payloads: a real mlp "
        "ModelInferRequest (~1 KiB) and ModelInferResponse.",
        "",
        "| peers send | routed req/s | broker CPU (% of a core) | broker CPU s per 1k req "
        "| req/s per broker core | broker wake-ups/req | fake frontends CPU | fake workers CPU "
        "| other CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(routing_row(r) for r in report.routing),
        "",
        "req/s per broker core = requests routed per CPU second the broker used (what one fully "
        "busy core would route; goal ≥ 30,000). 'other CPU' = CPU used by processes not started "
        "by this benchmark (% of one core).",
        "",
    ]
    if report.queued is not None:
        lines.append(queued_line(report.queued))
    if report.frontend is not None:
        lines.append(frontend_line(report.frontend))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--frontends", type=int, default=2, help="fake frontend sockets")
    p.add_argument("--workers", type=int, default=2, help="fake worker sockets")
    p.add_argument("--window", type=int, default=128, help="requests in flight per frontend")
    p.add_argument("--capacity", type=int, default=128, help="credit per fake worker")
    p.add_argument("--queued", type=int, default=10_000)
    p.add_argument("--frontend-concurrency", type=int, default=128)
    p.add_argument("--processes", type=int, default=2, help="load generator processes")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)
    # Roles (subprocesses of this module).
    p.add_argument("--role", choices=("worker", "frontend"), help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--coalesce", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--no-reply", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "worker":
        print(json.dumps(fake_worker(args)), flush=True)
        return 0
    if args.role == "frontend":
        print(json.dumps(fake_frontend(args)), flush=True)
        return 0

    t0 = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / f"broker-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    report = BrokerReport(
        meta={
            "timestamp": stamp,
            "git": git_sha(),
            "git_dirty": git_dirty(),
            "cpus": os.cpu_count(),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "frontends": args.frontends,
            "workers": args.workers,
            "window": args.window,
            "capacity": args.capacity,
            "logs": str(log_dir),
        },
    )
    for coalesce in (False, True):
        print(f"bench.broker_bench: routing, coalesce={coalesce}", file=sys.stderr)
        report.routing.append(routing(args, log_dir, coalesce))
    print("bench.broker_bench: broker RSS with queued requests", file=sys.stderr)
    report.queued = queued_memory(args, log_dir)
    print("bench.broker_bench: frontend RSS under load", file=sys.stderr)
    report.frontend = frontend_memory(args, log_dir)
    report.meta["elapsed_s"] = time.monotonic() - t0

    from bench import report as report_mod

    (args.out / f"broker-{stamp}.json").write_bytes(to_json(report))
    md = to_markdown(report)
    (args.out / "broker-latest.md").write_text(md)
    report_mod.write_latest(args.out)
    print(md)
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
