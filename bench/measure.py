"""One measurement point (closed-loop load at one concurrency on one system), sweeps of points,
and idle sampling.

Over the measured window of every point it records CPU seconds per 1,000 requests of each
process (utime + stime, the process and its descendants), wake-ups per request, resident memory,
the CPU that processes not started by this run used (a noise gauge), and, where the server
reports statistics, what executed (``bench.batchstats``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from bench.batchstats import batch_delta, batch_snapshot
from bench.lifecycle import Proc, dead
from bench.loadgen import run_load
from bench.models import MODELS
from bench.procs import (
    by_name,
    cpu_s,
    family,
    loadavg,
    machine_busy_s,
    own_cpu_s,
    rss_mb,
    tree,
    tree_cpu_s,
    tree_rss_mb,
    wakeups,
)
from bench.results import BatchSnapshot, IdleSample, Measurement


@dataclass
class Target:
    """A running system under test: where to send requests and which processes are its own."""

    system: str
    url: str
    procs: list[Proc]
    stats: bool = False  # answers get_inference_statistics with batch_stats
    stats_headers: dict[str, str] | None = None
    infer_headers: dict[str, str] | None = None
    by_process_name: bool = False
    """Costs per command name over the processes' whole families (``bench.procs.family``)
    instead of per process tree: a peer that runs as several servers (PyTriton) shows each."""


@dataclass
class Mark:
    """Cumulative counters at one instant of a measured window."""

    t: float
    busy: float
    cpu: dict[str, float]
    wakeups: dict[str, int]
    rss: dict[str, float]
    client: float
    siblings: float
    own: float
    stats: BatchSnapshot | None = None


def take_mark(target: Target, model: str, client_pids: list[int], siblings: Sequence[Proc]) -> Mark:
    # Each process tree is listed once per mark: listing walks all of /proc.
    if target.by_process_name:
        trees = by_name([q for p in target.procs for q in family(p.pid)])
    else:
        trees = {p.name: tree(p.pid) for p in target.procs}
    return Mark(
        t=time.monotonic(),
        busy=machine_busy_s(),
        cpu={name: cpu_s(procs) for name, procs in trees.items()},
        wakeups={name: wakeups(procs) for name, procs in trees.items()},
        rss={name: rss_mb(procs) for name, procs in trees.items()},
        client=sum(tree_cpu_s(pid) for pid in client_pids),
        siblings=sum(tree_cpu_s(p.pid) for p in siblings),
        own=own_cpu_s(),
        stats=batch_snapshot(target.url, model, target.stats_headers) if target.stats else None,
    )


def window_costs(a: Mark, b: Mark, requests: int) -> dict[str, object]:
    """The Measurement fields computed from the marks at the start and end of the window."""
    window = b.t - a.t
    # A process that started inside the window counts whole; one that ended counts nothing
    # (its CPU time left with it).
    cpu = {name: b.cpu[name] - a.cpu.get(name, 0.0) for name in b.cpu}
    client = b.client - a.client
    ours = sum(cpu.values()) + client + (b.own - a.own) + (b.siblings - a.siblings)

    def per_k(s: float) -> float | None:
        return s / requests * 1000 if requests else None

    out: dict[str, object] = {
        "window_s": window,
        "cpu_s": cpu,
        "cpu_s_per_1k": {name: per_k(s) for name, s in cpu.items()},
        "client_cpu_s_per_1k": per_k(client),
        "cpu_util": {name: s / window for name, s in cpu.items()},
        "wakeups_per_req": {
            name: ((n - a.wakeups.get(name, 0)) / requests if requests else None)
            for name, n in b.wakeups.items()
        },
        "rss_mb": b.rss,
        "client_cpu_util": client / window,
        # CPU used during the window by processes this run did not start: the noise gauge.
        "foreign_cpu_util": max(0.0, (b.busy - a.busy) - ours) / window,
    }
    delta = batch_delta(a.stats, b.stats)
    if delta:
        out["compute"] = delta
        out["mean_batch"] = delta.mean_batch
        out["batch_sizes"] = {s: v.n for s, v in delta.sizes.items()}
    return out


def measure(
    target: Target,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    siblings: Sequence[Proc] = (),
) -> Measurement:
    """Closed-loop load at one concurrency; CPU, memory and batch statistics over the window.

    ``siblings``: processes of other systems this run keeps up meanwhile (idle), whose CPU
    does not count as the noise of processes this run did not start."""
    marks: dict[str, Mark] = {}

    def marker(label: str) -> Callable[[list[int]], None]:
        def mark(pids: list[int]) -> None:
            marks[label] = take_mark(target, model, pids, siblings)

        return mark

    head = Measurement(
        system=target.system, model=model, concurrency=concurrency, loadavg=loadavg()
    )
    try:
        res = run_load(
            target.url,
            model,
            concurrency,
            args.duration,
            args.warmup,
            args.processes,
            on_window_start=marker("start"),
            on_window_end=marker("end"),
            width=MODELS[model],
            headers=target.infer_headers,
        )
    except Exception as exc:
        return msgspec.structs.replace(
            head, error=f"{type(exc).__name__}: {exc}", dead=dead(target.procs)
        )
    fields: dict[str, object] = {
        k: v for k, v in res.to_dict().items() if k not in ("model", "concurrency")
    }
    if "start" in marks and "end" in marks:
        fields.update(window_costs(marks["start"], marks["end"], res.requests))
    fields["dead"] = dead(target.procs)
    # Every field already has its declared type (LoadResult's and window_costs' names match).
    return msgspec.structs.replace(head, **fields)


def sweep(target: Target, models: list[str], args: argparse.Namespace) -> list[Measurement]:
    """Every model at every concurrency on one system."""
    out = []
    for model in models:
        for c in args.concurrency:
            print(f"bench:   {target.system} {model} c={c}", file=sys.stderr)
            out.append(measure(target, model, c, args))
    return out


def sweep_interleaved(
    targets: dict[str, list[Target]],
    args: argparse.Namespace,
    rnd: int = 0,
    concurrency: dict[str, list[int]] | None = None,
) -> list[Measurement]:
    """Every system at one point, back to back, before the next point: a ratio then compares
    measurements seconds apart instead of minutes, which on a shared VM drift by 20 %.

    ``targets`` maps each model to the systems (all up at once) that serve it. The order of
    the systems alternates from point to point and round to round, so neither always runs
    first (on caches another system warmed, or after a quiet spell). ``concurrency`` gives
    a model its own concurrencies instead of ``args.concurrency``.
    """
    out = []
    step = rnd
    everyone = list({id(t): t for ts in targets.values() for t in ts}.values())
    for model, systems in targets.items():
        for c in (concurrency or {}).get(model, args.concurrency):
            order = systems if step % 2 == 0 else systems[::-1]
            step += 1
            for target in order:
                print(f"bench:   {target.system} {model} c={c}", file=sys.stderr)
                others = [p for t in everyone if t is not target for p in t.procs]
                out.append(measure(target, model, c, args, others))
    return out


def idle_cpu(procs: list[Proc], seconds: float) -> dict[str, float]:
    """Each process's CPU use (fraction of one core) while nothing is sent: polling, heartbeats."""
    if seconds <= 0:
        return {}
    before = {p.name: tree_cpu_s(p.pid) for p in procs}
    t0 = time.monotonic()
    time.sleep(seconds)
    window = time.monotonic() - t0
    return {p.name: (tree_cpu_s(p.pid) - before[p.name]) / window for p in procs}


def idle_rss(procs: list[Proc]) -> dict[str, float]:
    """Each process tree's resident memory, MiB."""
    return {p.name: tree_rss_mb(p.pid) for p in procs}


def idle_sample(target: Target, model: str, seconds: float) -> IdleSample:
    """``target``'s idle CPU and memory, as a round record."""
    return IdleSample(
        system=target.system,
        model=model,
        idle_cpu_util=idle_cpu(target.procs, seconds),
        idle_rss_mb=idle_rss(target.procs),
    )
