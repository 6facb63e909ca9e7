"""Peers (``make bench-peers``): the same model on PyTriton and Ray Serve, same load, same run.

Every round measures the ``mlp`` demo model (FP32 Linear(256,256)-ReLU-
Linear(256,256), seed 0, one torch thread, max batch 64, 500 µs queue delay) served by:

1. ``bare``: the bare grpc.aio server (``bench.bare_server``), the ceiling of Python gRPC;
2. ``ours``: broker + worker + frontend, as in ``bench.run``;
3. ``pytriton``: PyTriton (a real Triton server with a Python model, ``bench/pytriton_server.py``);
4. ``ray``: Ray Serve's gRPC proxy with the KServe v2 service and ``@serve.batch``
   (``bench/ray_server.py``);

each at the same concurrencies with the same closed-loop load generator (``bench.loadgen``), then
the model in-process at the batch sizes executed (see ``bench.run``). The first three are up at
once and measured point by point, back to back in alternating order, so that ratios compare
measurements seconds apart; Ray, which uses ~10 % of a core while idle, runs on its own after them.

The peers run in their own virtualenv, ``bench/.venv-peers``, made here on first use:
``torch==2.13.0`` (pinned: an unpinned torch downloads GBs of CUDA wheels),
``nvidia-pytriton==0.7.0``, ``matplotlib`` and, when it installs in time, ``ray[serve]==2.60.0``.
PyTriton's Triton stub links the system libpython, so it starts with ``LD_LIBRARY_PATH`` set to the
interpreter's LIBDIR; all its endpoints bind 127.0.0.1, its statistics stay token-protected (the
token is sent as a header).

Ray always uses the machine's non-loopback address for its own services (it replaces 127.0.0.1
on purpose), so the measurement runs inside a private network namespace holding only a loopback
interface (``unshare -n``) where Ray falls back to 127.0.0.1; every system is measured in that
namespace so they stay comparable. Where no namespace can be made, Ray is skipped with a note.

Writes ``<out>/peers-<stamp>.json``, ``<out>/peers-latest.md``, ``<out>/peers-latest.png`` and
regenerates ``<out>/latest.md``.

    python -m bench.peers [--concurrency 1,8,32,128] [--duration 8]
                          [--systems bare,ours,pytriton,ray] [--no-install] [--no-netns]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.batchstats import batch_snapshot
from bench.cli import add_common_args, new_meta, parse_ints, write_outputs
from bench.compare import attach_inprocess, inprocess_sizes, run_inprocess
from bench.lifecycle import Proc, StackError, free_port, stop_all
from bench.markdown import (
    batch_size_table,
    fmt,
    meta_line,
    report_tail,
    results_table,
)
from bench.measure import Target, idle_cpu, idle_rss, idle_sample, sweep, sweep_interleaved
from bench.models import MODEL_BLURB, MODELS
from bench.peers_venv import HOOK_ENV, MODEL, ensure_venv, peer_argv, peers_libdir
from bench.ready import sanity_check, wait_ready
from bench.report import BENCH_DIR, REPO_ROOT
from bench.results import (
    Measurement,
    Report,
    Round,
    RoundRecord,
    StackInfo,
    StartFailure,
    SummaryRow,
)
from bench.summary import summarize, within_rounds
from bench.systems import build_repo, start_bare, start_ours_idle

SYSTEMS = ("bare", "ours", "pytriton", "ray")
DEFAULT_CONCURRENCY = "1,8,32,64,128"
NETNS_ENV = "BENCH_PEERS_NETNS"
PEER_READY_TIMEOUT_S = 240.0
SETTLE_S = 1.0
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_pytriton(
    args: argparse.Namespace, log_dir: Path, rnd: int, repo: Path, tmp: Path
) -> tuple[Target, StackInfo]:
    """PyTriton serving ``MODEL``, ready and idle-measured; its workspace goes with its procs."""
    grpc_port, http_port = free_port(), free_port()
    url = f"127.0.0.1:{grpc_port}"
    token = os.urandom(16).hex()
    token_file = tmp / f"pytriton-token-{rnd}"
    token_file.write_text(token)
    workspace = tmp / f"pytriton-ws-{rnd}"
    info = StackInfo(workspace=str(workspace))
    headers = {"triton-grpc-protocol-triton-access-token": token}
    proc = Proc(
        "server",
        peer_argv(
            "pytriton_server.py",
            repo,
            grpc_port,
            http_port,
            "--token-file",
            str(token_file),
            "--workspace",
            str(workspace),
        ),
        log_dir / f"r{rnd}-pytriton",
        env={"LD_LIBRARY_PATH": peers_libdir(), **ONE_THREAD},
        cwd=str(REPO_ROOT),
        grace_s=15.0,
    )
    try:
        t0 = time.monotonic()
        wait_ready(url, [proc], [MODEL], timeout=PEER_READY_TIMEOUT_S)
        info.ready_s = time.monotonic() - t0
        info.sanity_error = sanity_check(url, MODEL, MODELS[MODEL])
        info.statistics = batch_snapshot(url, MODEL, headers) is not None
        target = Target(
            "pytriton",
            url,
            [proc],
            stats=info.statistics,
            stats_headers=headers,
            by_process_name=True,
        )
        time.sleep(SETTLE_S)
        info.idle_cpu_util = idle_cpu(target.procs, args.idle_seconds)
        info.idle_rss_mb = idle_rss(target.procs)
    except BaseException:
        stop_pytriton([proc], info)
        raise
    return target, info


def stop_pytriton(procs: list[Proc], info: StackInfo) -> None:
    info.exit_codes = stop_all(procs)
    if info.workspace:
        shutil.rmtree(info.workspace, ignore_errors=True)


def run_interleaved(
    args: argparse.Namespace,
    log_dir: Path,
    rnd: int,
    repo: Path,
    tmp: Path,
    systems: list[str],
    entry: Round,
) -> None:
    """Bare, ours and PyTriton, all up at once, measured point by point
    (``sweep_interleaved``). Ray stays out: it uses ~10 % of a core while idle."""
    out = entry.results
    up: dict[str, Target] = {}
    pt_info: StackInfo | None = None
    try:
        for system in ("bare", "ours", "pytriton"):
            if system not in systems:
                continue
            print(f"bench.peers: round {rnd + 1}/{args.rounds}: starting {system}", file=sys.stderr)
            try:
                if system == "bare":
                    up[system] = start_bare(log_dir, rnd, MODEL)
                elif system == "ours":
                    up[system], entry.info["ours"] = start_ours_idle(
                        args, log_dir, rnd, repo, [MODEL]
                    )
                else:
                    up[system], pt_info = start_pytriton(args, log_dir, rnd, repo, tmp)
                    entry.info["pytriton"] = pt_info
            except StackError as exc:
                out.append(StartFailure(system=system, model=MODEL, error=str(exc)))
        out += sweep_interleaved({MODEL: list(up.values())}, args, rnd)
        if "bare" in up:
            out.append(idle_sample(up["bare"], MODEL, args.idle_seconds))
    finally:
        for system, target in up.items():
            if system == "pytriton" and pt_info is not None:
                stop_pytriton(target.procs, pt_info)
            elif system == "ours":
                entry.info["ours"].exit_codes = stop_all(target.procs)
            else:
                stop_all(target.procs)


def run_ray(
    args: argparse.Namespace, log_dir: Path, rnd: int, repo: Path
) -> tuple[list[RoundRecord], StackInfo]:
    """Ray Serve on its own: started, measured at every concurrency, stopped."""
    grpc_port, http_port = free_port(), free_port()
    url = f"127.0.0.1:{grpc_port}"
    headers = {"application": MODEL}  # Ray Serve's gRPC proxy routes by this metadata key
    procs: list[Proc] = []
    out: list[RoundRecord] = []
    info = StackInfo()
    try:
        procs.append(
            Proc(
                "server",
                peer_argv("ray_server.py", repo, grpc_port, http_port),
                log_dir / f"r{rnd}-ray",
                env={
                    HOOK_ENV: str(BENCH_DIR / "ray_loopback.py"),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    **ONE_THREAD,
                },
                cwd=str(REPO_ROOT),
                grace_s=20.0,
            )
        )
        t0 = time.monotonic()
        wait_ready(url, procs, [MODEL], timeout=PEER_READY_TIMEOUT_S, headers=headers)
        info.ready_s = time.monotonic() - t0
        info.sanity_error = sanity_check(url, MODEL, MODELS[MODEL], headers)
        target = Target("ray", url, procs, infer_headers=headers)
        time.sleep(SETTLE_S)
        info.idle_cpu_util = idle_cpu(procs, args.idle_seconds)
        info.idle_rss_mb = idle_rss(procs)
        out += sweep(target, [MODEL], args)
    except StackError as exc:
        out.append(StartFailure(system="ray", model=MODEL, error=str(exc)))
    finally:
        info.exit_codes = stop_all(procs)
    return out, info


# --------------------------------------------------------------------------- report
def versus_table(
    rounds: list[Round], summary: list[SummaryRow], concurrencies: list[int], systems: list[str]
) -> list[str]:
    """Our stack against each peer at each concurrency: every ratio (and the p50 difference) is
    taken within a round first, then the median over rounds is shown."""

    def ratio(key: str) -> Callable[[Measurement, Measurement], float | None]:
        def value(a: Measurement, b: Measurement) -> float | None:
            x, y = getattr(a, key), getattr(b, key)
            return float(x / y) if x and y else None

        return value

    def p50_diff(a: Measurement, b: Measurement) -> float | None:
        return a.p50_ms - b.p50_ms if a.p50_ms is not None and b.p50_ms is not None else None

    peers = [s for s in systems if s not in ("ours",)]
    head = "| conc. | ours req/s | " + " | ".join(
        f"ours ÷ {p} req/s | ours ÷ {p} p99" for p in peers
    )
    lines = [
        head + " | ours p50 minus bare p50 |",
        "|---:|---:|" + "---:|---:|" * len(peers) + "---:|",
    ]
    for c in concurrencies:
        ours = next(
            (r for r in summary if r.system == "ours" and r.concurrency == c and r.rounds), None
        )
        if ours is None:
            continue
        cells = [str(c), fmt(ours.throughput, ",.0f")]
        for p in peers:
            for key in ("throughput", "p99_ms"):
                x = within_rounds(rounds, "ours", p, MODEL, c, ratio(key))
                cells.append("-" if x is None else f"{x:.2f}x")
        diff = within_rounds(rounds, "ours", "bare", MODEL, c, p50_diff)
        cells.append(fmt(diff, "+.2f") + (" ms" if diff is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: Report) -> str:
    meta = report.meta
    systems = meta["systems"]
    inst = report.install
    versions = inst.get("versions", {})
    lines = [
        "## Peers: the same model on PyTriton and Ray Serve (`make bench-peers`)",
        "",
        meta_line(meta),
        "",
        f"Model `{MODEL}`: {MODEL_BLURB[MODEL]}; max batch 64, 500 µs queue delay, one torch "
        "thread, everywhere. Peers from `bench/.venv-peers`: "
        + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not installed")
        + ". PyTriton = Triton server + Python backend stub + the PyTriton process running the "
        "model; Ray Serve = gRPC proxy actor + one replica (`@serve.batch`). 'CPU s per 1k' of a "
        "peer counts all its processes (PyTriton's per command name over its process tree and "
        "session; Ray's `server` = the whole process tree). PyTriton's "
        "`compute_infer` is timed by Triton's Python backend around its round trip to the "
        "PyTriton process, so its 'compute' includes that hop; Ray reports no statistics. "
        + (
            "Measured inside a private network namespace with only a loopback interface "
            "(`unshare -n`), every system alike."
            if meta.get("netns")
            else "Measured in the machine's own network namespace."
        ),
        "",
        *results_table(report.summary, MODEL),
        "",
        "Our stack against each system: ratios within each round, median over rounds (targets at "
        "c=64 in PEERS.md: ≥ 0.6x bare, "
        "≥ 1.5x PyTriton with lower p99; c=1 p50 within 1.5 ms of bare):",
        "",
        *versus_table(report.rounds, report.summary, meta["concurrency"], systems),
        "",
    ]
    bs = batch_size_table(report, MODEL)
    if bs:
        lines += [*bs, ""]
    return "\n".join([*lines, *report_tail(report, [MODEL])]) + "\n"


# --------------------------------------------------------------------------- main
def _in_private_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def _reexec_in_netns(argv: list[str], status_file: Path) -> int | None:
    """Run this module again inside ``unshare -n`` (loopback only); None if that is impossible."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    inner = [sys.executable, "-m", "bench.peers", *argv, "--install-status", str(status_file)]
    script = "ip link set lo up && exec " + " ".join(_quote(a) for a in inner)
    env = {**os.environ, NETNS_ENV: "1"}
    return subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, cwd=REPO_ROOT).returncode


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_common_args(parser, duration=8.0, warmup=2.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument(
        "--inprocess-seconds", type=float, default=0.3, help="timed seconds per batch size"
    )
    parser.add_argument("--no-install", action="store_true", help="never pip install")
    parser.add_argument("--no-netns", action="store_true", help="no private network namespace")
    parser.add_argument("--ray-install-timeout", type=float, default=300.0)
    parser.add_argument("--install-status", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.duration = 8.0 if args.duration is None else args.duration
    args.warmup = 2.0 if args.warmup is None else args.warmup
    args.concurrency = parse_ints(args.concurrency or DEFAULT_CONCURRENCY)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; known: {list(SYSTEMS)}")
    want_peers = any(s in systems for s in ("pytriton", "ray"))

    # Install first, outside any namespace (pip needs the package index).
    if args.install_status is not None:
        install = json.loads(args.install_status.read_text())
    elif want_peers:
        print("bench.peers: preparing bench/.venv-peers", file=sys.stderr)
        install = ensure_venv("ray" in systems, not args.no_install, args.ray_install_timeout)
    else:
        install = {"notes": []}
    notes: list[tuple[str, str, str]] = [("install", "-", n) for n in install.get("notes", [])]
    if install.get("base_error"):
        notes.append(("pytriton", "-", f"skipped: {install['base_error']}"))
        systems = [s for s in systems if s not in ("pytriton", "ray")]
    if "ray" in systems and install.get("ray_error"):
        notes.append(("ray", "-", install["ray_error"]))
        systems.remove("ray")

    if "ray" in systems and not _in_private_netns():
        if not args.no_netns:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(install, f)
            try:
                rc = _reexec_in_netns(argv, Path(f.name))
            finally:
                os.unlink(f.name)
            if rc is not None:
                return rc
        notes.append(
            (
                "ray",
                "-",
                "skipped: Ray's own services always use the machine's non-loopback address "
                "(ray.init replaces 127.0.0.1), and no private network namespace could be made "
                "(`unshare -n`), so it would send traffic beyond loopback",
            )
        )
        systems.remove("ray")

    t_begin = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / f"peers-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        **new_meta(args, stamp, log_dir),
        "models": [MODEL],
        "systems": systems,
        "netns": _in_private_netns(),
    }
    report = Report(meta=meta, install=install, notes=notes)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_s:
        tmp = Path(tmp_s)
        repo = tmp / "models"
        err = build_repo(repo, log_dir, [MODEL], frozenset())
        if err:
            report.repo_error = err
            systems = [s for s in systems if s == "bare"]
        for rnd in range(args.rounds):
            entry = Round(round=rnd)
            run_interleaved(args, log_dir, rnd, repo, tmp, systems, entry)
            if "ray" in systems:
                print(f"bench.peers: round {rnd + 1}/{args.rounds}: ray", file=sys.stderr)
                res, info = run_ray(args, log_dir, rnd, repo)
                entry.results += res
                entry.info["ray"] = info
            report.rounds.append(entry)
        results = [r for rnd in report.rounds for r in rnd.results]
        sizes = inprocess_sizes(results, MODEL)
        print(f"bench.peers: {MODEL} in-process at batch sizes {sizes}", file=sys.stderr)
        report.inprocess[MODEL] = run_inprocess(
            None if err else repo, MODEL, sizes, args.inprocess_seconds
        )
    attach_inprocess(report)
    report.meta["systems"] = systems
    report.summary = summarize(report.rounds, args.concurrency, systems, [MODEL])
    report.meta["elapsed_s"] = time.monotonic() - t_begin
    return write_outputs(report, args, "peers", to_markdown)


if __name__ == "__main__":
    sys.exit(main())
