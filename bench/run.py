"""Benchmark driver (``make bench``): our stack against baselines measured in the same run.

Every round starts, side by side on the same machine:

1. for each benchmark model, the bare grpc.aio server (``bench.bare_server``) answering with that
   model's output size, the ceiling of Python gRPC;
2. our stack: broker, one worker and one frontend as separate processes, started the way users
   start them, on a temporary model repository holding the demo models
   (``python -m worker.demo_models DIR``) and the compute-heavy ``wide_mlp``
   (``python -m bench.wide_model DIR``);

then measures each model at every requested concurrency with the closed-loop load generator
(``bench.loadgen``), both systems at one point back to back before the next point (in alternating
order), so that a ratio compares measurements seconds apart; idle, both use no CPU. ``mlp_wait``
(``mlp`` waiting its queue delay for fuller batches) is measured at ``--wait-concurrency`` only,
and skipped with a note where the demo models do not include it.
Then, once per model, the model called in-process (``bench.inprocess``) at the batch sizes the
worker actually executed, so the worker's compute time per batch (from
``get_inference_statistics``: ``batch_stats[b].compute_infer``) is set against the bare model at
the same batch size.

With ``--curve`` (default) ``ours_curve`` (the same stack with CURVE on the fabric) and with
``--traced`` (default) ``ours_traced`` (the same stack tracing 1 % of the calls, every tier
exporting OTLP/gRPC to a local sink, ``bench.otlp_sink``) are measured on ``mlp`` alongside,
each reported as a ratio to ``ours``. With ``--pytriton`` (default) PyTriton serves ``mlp``
alongside (``bench.peers.start_pytriton``, from ``bench/.venv-peers``, made on first use): its CPU
per call (every process of its tree and session) is set against ours, with the issue's goals
against it (``bench.peer_cpu``); where it cannot run, the report says why. With ``--large``
(default) one round of ``bench.large``'s points follows (64 KiB c=16, 1 MiB c=8, 16 MiB c=4,
``identity_fp32`` against the bare echo server; ``bench.run_large``), with the goals at 1 MiB and
16 MiB.

The machine is small and shared, so absolute numbers are noise-prone: every figure for our stack is
reported as a ratio against baselines measured in the same run (see ``bench.measure`` for what
each point records).

Writes ``<out>/run-<UTC timestamp>.json``, ``<out>/run-latest.md``, ``<out>/run-latest.png``
(throughput against p99 latency) and regenerates ``<out>/latest.md`` (see ``bench.report``);
process logs go to ``<out>/logs/<UTC timestamp>/``.

    python -m bench.run [--quick] [--duration 8] [--warmup 2] [--concurrency 1,8,32,64,128]
                        [--models mlp,mlp_wait,wide_mlp] [--wait-concurrency 1,64] [--rounds 1]
                        [--out bench/results] [--no-curve] [--no-traced] [--no-routed]
                        [--no-pytriton] [--no-install] [--no-large]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.cli import add_common_args, new_meta, parse_ints, write_outputs
from bench.compare import attach_inprocess, inprocess_sizes, run_inprocess
from bench.lifecycle import StackError, stop_all
from bench.markdown import to_markdown
from bench.measure import Target, idle_sample, sweep_interleaved
from bench.models import MODELS, OPTIONAL_MODELS
from bench.peer_cpu import PEER, cpu_rows, peer_cpu_lines, peer_goals
from bench.peers import start_pytriton, stop_pytriton
from bench.peers_venv import ensure_venv
from bench.results import Report, Round, StackInfo, StartFailure
from bench.routed import ROUTED_MODEL, ROUTED_SYSTEM, build_routed_repo
from bench.run_large import large_goals, large_lines, run_large
from bench.summary import summarize
from bench.systems import build_repo, start_bare, start_ours_idle
from fabric.curve import init_keys

DEFAULT_MODELS = "mlp,mlp_wait,wide_mlp"
DEFAULT_CONCURRENCY = "1,8,32,64,128"
QUICK_CONCURRENCY = "1,64"
WAIT_CONCURRENCY = "1,64"
CURVE_SYSTEM = "ours_curve"
CURVE_MODEL = "mlp"
TRACED_SYSTEM = "ours_traced"
TRACED_MODEL = "mlp"
PEER_MODEL = "mlp"


def run_round(
    args: argparse.Namespace,
    log_dir: Path,
    rnd: int,
    repo: Path | None,
    models: list[str],
    routing: Path | None = None,
    peer_tmp: Path | None = None,
) -> Round:
    """One round of ``make bench``: the bare server for each model and our stack, all up at
    once, measured point by point (``sweep_interleaved``)."""
    entry = Round(round=rnd)
    bare: dict[str, Target] = {}
    ours: Target | None = None
    ours_info: StackInfo | None = None
    curve: Target | None = None
    curve_info: StackInfo | None = None
    routed: Target | None = None
    routed_info: StackInfo | None = None
    traced: Target | None = None
    traced_info: StackInfo | None = None
    peer: Target | None = None
    peer_info: StackInfo | None = None
    try:
        for model in models:
            print(f"bench: round {rnd + 1}/{args.rounds}: starting bare, {model}", file=sys.stderr)
            try:
                bare[model] = start_bare(log_dir, rnd, model)
            except StackError as exc:
                entry.results.append(StartFailure(system="bare", model=model, error=str(exc)))
        if repo is not None and not args.skip_ours:
            print(f"bench: round {rnd + 1}/{args.rounds}: starting our stack", file=sys.stderr)
            try:
                ours, ours_info = start_ours_idle(args, log_dir, rnd, repo, models)
            except StackError as exc:
                entry.results.append(StartFailure(system="ours", error=str(exc)))
            if ours_info is not None:
                entry.info["ours"] = ours_info
            if args.curve:
                print(f"bench: round {rnd + 1}/{args.rounds}: starting ours with CURVE",
                      file=sys.stderr)  # fmt: skip
                keys = ("--fabric-keys", str(init_keys(log_dir / "fabric-keys").root))
                try:
                    curve, curve_info = start_ours_idle(
                        args, log_dir, rnd, repo, [CURVE_MODEL], CURVE_SYSTEM, keys
                    )
                except StackError as exc:
                    entry.results.append(StartFailure(system=CURVE_SYSTEM, error=str(exc)))
                if curve_info is not None:
                    entry.info[CURVE_SYSTEM] = curve_info
            if routing is not None and ROUTED_MODEL in models:
                print(f"bench: round {rnd + 1}/{args.rounds}: starting ours with a routing file",
                      file=sys.stderr)  # fmt: skip
                try:
                    routed, routed_info = start_ours_idle(
                        args, log_dir, rnd, routing.parent, [ROUTED_MODEL], ROUTED_SYSTEM,
                        frontend_args=("--routing", str(routing)),
                    )  # fmt: skip
                except StackError as exc:
                    entry.results.append(StartFailure(system=ROUTED_SYSTEM, error=str(exc)))
                if routed_info is not None:
                    entry.info[ROUTED_SYSTEM] = routed_info
            if args.traced and TRACED_MODEL in models:
                print(f"bench: round {rnd + 1}/{args.rounds}: starting ours, traced",
                      file=sys.stderr)  # fmt: skip
                try:
                    traced, traced_info = start_ours_idle(
                        args, log_dir, rnd, repo, [TRACED_MODEL], TRACED_SYSTEM, traced=True
                    )
                except StackError as exc:
                    entry.results.append(StartFailure(system=TRACED_SYSTEM, error=str(exc)))
                if traced_info is not None:
                    entry.info[TRACED_SYSTEM] = traced_info
        if repo is not None and peer_tmp is not None and PEER_MODEL in models:
            print(f"bench: round {rnd + 1}/{args.rounds}: starting PyTriton", file=sys.stderr)
            try:
                peer, peer_info = start_pytriton(args, log_dir, rnd, repo, peer_tmp)
                entry.info[PEER] = peer_info
            except (StackError, OSError, subprocess.SubprocessError) as exc:
                # Not ready in time, died, or its interpreter would not even run: the report
                # says so in place of its figures.
                entry.results.append(StartFailure(system=PEER, model=PEER_MODEL, error=str(exc)))
        targets = {m: [t for t in (bare.get(m), ours) if t is not None] for m in models}
        if curve is not None and CURVE_MODEL in targets:
            targets[CURVE_MODEL].append(curve)
        if routed is not None:
            targets[ROUTED_MODEL].append(routed)
        if traced is not None:
            targets[TRACED_MODEL].append(traced)
        if peer is not None:
            targets[PEER_MODEL].append(peer)
        entry.results += sweep_interleaved(targets, args, rnd, args.model_concurrency)
        entry.results += [idle_sample(t, m, args.idle_seconds) for m, t in bare.items()]
    finally:
        for t in bare.values():
            stop_all(t.procs)
        if ours is not None and ours_info is not None:
            ours_info.exit_codes = stop_all(ours.procs)
        if curve is not None and curve_info is not None:
            curve_info.exit_codes = stop_all(curve.procs)
        if routed is not None and routed_info is not None:
            routed_info.exit_codes = stop_all(routed.procs)
        if traced is not None and traced_info is not None:
            traced_info.exit_codes = stop_all(traced.procs)
        if peer is not None and peer_info is not None:
            stop_pytriton(peer.procs, peer_info)
    return entry


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The flags, with --quick's defaults applied; and the models asked for."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_common_args(parser, duration=8.0, warmup=2.0)
    parser.add_argument(
        "--quick", action="store_true", help="short run: c=1,64, mlp only, 4 s per point"
    )
    parser.add_argument("--models", default=None, help=f"comma-separated ({DEFAULT_MODELS})")
    parser.add_argument(
        "--wait-concurrency",
        default=WAIT_CONCURRENCY,
        help=f"concurrencies at which mlp_wait is measured ({WAIT_CONCURRENCY}); "
        "the other models use --concurrency",
    )
    parser.add_argument(
        "--inprocess-seconds", type=float, default=0.3, help="timed seconds per batch size"
    )
    parser.add_argument("--skip-ours", action="store_true", help="baselines only")
    parser.add_argument(
        "--curve",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also measure our stack with CURVE on the fabric ({CURVE_SYSTEM}, {CURVE_MODEL} "
        "only), to show what encryption and authentication cost",
    )
    parser.add_argument(
        "--routed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also measure our stack with a routing file ({ROUTED_SYSTEM}, {ROUTED_MODEL} "
        "split 90/10 over two targets), to show what routing costs",
    )
    parser.add_argument(
        "--traced",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also measure our stack exporting OTLP traces of 1 %% of the calls to a local sink "
        f"({TRACED_SYSTEM}, {TRACED_MODEL} only), to show what tracing costs",
    )
    parser.add_argument(
        "--pytriton",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also measure PyTriton on {PEER_MODEL} (from bench/.venv-peers, made on first "
        "use), for CPU per call and throughput against it",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never pip install bench/.venv-peers"
    )
    parser.add_argument(
        "--large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the model points, one round of bench.large's points (64 KiB c=16, "
        "1 MiB c=8, 16 MiB c=4; ours against the bare echo server)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (4.0 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.concurrency = parse_ints(
        args.concurrency or (QUICK_CONCURRENCY if quick else DEFAULT_CONCURRENCY)
    )
    args.model_concurrency = {"mlp_wait": parse_ints(args.wait_concurrency)}
    models = [m for m in (args.models or ("mlp" if quick else DEFAULT_MODELS)).split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if quick:
        args.idle_seconds = min(args.idle_seconds, 1.0)
    return args, models


def drop_missing_optional(report: Report, repo: Path, models: list[str]) -> list[str]:
    """``models`` less the optional ones the built repository lacks, each with a note."""
    kept = []
    for m in models:
        if m in OPTIONAL_MODELS and not (repo / m).is_dir():
            note = f"`{m}` is not in the demo model repository (worker.demo_models); skipped"
            report.notes.append((m, "-", note))
            print(f"bench: {note}", file=sys.stderr)
        else:
            kept.append(m)
    return kept


def prepare_pytriton(args: argparse.Namespace, report: Report, models: list[str]) -> bool:
    """Whether PyTriton is measured: its virtualenv made (or found), or a note saying why not."""
    if PEER_MODEL not in models:
        return False
    if not args.pytriton:
        report.notes.append((PEER, "-", "not measured: --no-pytriton"))
        return False
    print("bench: preparing bench/.venv-peers for PyTriton", file=sys.stderr)
    install = ensure_venv(False, not args.no_install, 0.0)
    report.install = install
    report.notes += [("install", "-", n) for n in install.get("notes", [])]
    if install.get("base_error"):
        note = f"PyTriton cannot run in this environment: {install['base_error']}"
        report.notes.append((PEER, "-", note))
        print(f"bench: {note}", file=sys.stderr)
        return False
    return True


def goal_sections(report: Report) -> list[str]:
    """PyTriton's CPU per call and the large payloads, each with its goals (Markdown)."""
    lines: list[str] = []
    if PEER_MODEL in report.meta["models"]:
        peer = [g for g in report.goals if g.name.endswith("_vs_pytriton")]
        lines += peer_cpu_lines(report.cpu_per_call, peer, PEER_MODEL)
    if report.meta.get("large"):
        big = [g for g in report.goals if g.name.startswith("large_")]
        lines += large_lines(report.large, big, report.meta.get("large_error"))
    return lines


def render(report: Report) -> str:
    """``run-latest.md``: ``bench.markdown.to_markdown`` with the goal sections."""
    return to_markdown(report, goal_sections(report))


def main(argv: list[str] | None = None) -> int:
    args, models = parse_args(argv)
    t_begin = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    meta = {**new_meta(args, stamp, log_dir), "models": models, "quick": args.quick}
    meta["large"] = args.large
    report = Report(meta=meta)
    pytriton = prepare_pytriton(args, report, models)
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        built = Path(tmp) / "models"
        repo: Path | None = built
        err = build_repo(built, log_dir, models, OPTIONAL_MODELS)
        if err:
            report.repo_error = err
            print(f"bench: cannot build the model repository; our stack is skipped\n{err}")
            repo = None
        else:
            models = drop_missing_optional(report, built, models)
            report.meta["models"] = models
        routing = None
        if repo is not None and args.routed and ROUTED_MODEL in models:
            routing = build_routed_repo(repo, Path(tmp) / "routed")
        peer_tmp = Path(tmp) if pytriton else None
        for rnd in range(args.rounds):
            report.rounds.append(run_round(args, log_dir, rnd, repo, models, routing, peer_tmp))
        all_results = [r for rnd_ in report.rounds for r in rnd_.results]
        for model in models:
            sizes = inprocess_sizes(all_results, model)
            print(f"bench: {model} in-process at batch sizes {sizes}", file=sys.stderr)
            report.inprocess[model] = run_inprocess(repo, model, sizes, args.inprocess_seconds)
        if args.large:
            if repo is None:
                report.meta["large_error"] = "the model repository could not be built"
            else:
                print("bench: large payloads, one round", file=sys.stderr)
                report.large, report.meta["large_error"] = run_large(
                    args.quick, repo, log_dir / "large"
                )
    attach_inprocess(report)
    every_c = list(dict.fromkeys([*args.concurrency, *args.model_concurrency["mlp_wait"]]))
    report.summary = summarize(
        report.rounds,
        every_c,
        ["bare", "ours", CURVE_SYSTEM, ROUTED_SYSTEM, TRACED_SYSTEM, PEER],
        models,
    )
    report.cpu_per_call = cpu_rows(report.rounds, PEER_MODEL)
    if PEER_MODEL in models:
        report.goals += peer_goals(report.rounds, report.notes, PEER_MODEL)
    if args.large:
        report.goals += large_goals(report.large, report.meta.get("large_error"))
    report.meta["elapsed_s"] = time.monotonic() - t_begin
    return write_outputs(report, args, "run", render)


if __name__ == "__main__":
    sys.exit(main())
