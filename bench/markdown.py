"""Markdown for ``make bench`` and ``make bench-peers``: the results tables, batch sizes, idle
figures, failures and notes, and the run's one-line description. Formatting only; the numbers come
from ``bench.summary``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.compare import inprocess_call_us
from bench.models import MODEL_BLURB
from bench.results import Goal, IdleSample, Measurement, Note, Report, StartFailure, SummaryRow
from bench.routed import routing_cost_lines
from bench.summary import median


def fmt(x: float | None, spec: str, none: str = "-") -> str:
    """``x`` formatted with ``spec``, or ``none`` for a missing value."""
    return none if x is None else format(x, spec)


def per_tier(values: Mapping[str, float | None], spec: str, total: bool = True) -> str:
    """``frontend 0.1 · broker 0.2 (Σ 0.3)``."""
    txt = " · ".join(f"{n} {fmt(v, spec)}" for n, v in values.items())
    known = [v for v in values.values() if v is not None]
    if total and len(values) > 1 and len(known) == len(values):
        txt += f" (Σ {format(sum(known), spec)})"
    return txt


def results_table(summary: list[SummaryRow], model: str, ref: str = "bare") -> list[str]:
    """The Markdown table of every system measured on ``model``."""
    lines = [
        "| system | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | req/s vs bare "
        "| p50 vs bare | p99 vs bare | CPU s per 1k req (per tier) | wake-ups/req (per tier) "
        "| client CPU s/1k | other CPU | RSS MB | mean batch | compute µs/row | in-process "
        "µs/row, same batches | compute vs in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in summary:
        if r.model != model:
            continue
        if not r.rounds:
            lines.append(f"| {r.system} | {r.concurrency} | failed |" + " |" * 16)
            continue
        is_ref = r.system == ref
        ratio = "1 (ref)" if is_ref else fmt(r.throughput_vs_bare, ".2f") + "x"
        p50r = (
            "1 (ref)"
            if is_ref
            else (fmt(r.p50_vs_bare, ".2f") + f"x (+{fmt(r.p50_minus_bare_ms, '.2f')} ms)")
        )
        p99r = "1 (ref)" if is_ref else fmt(r.p99_vs_bare, ".2f") + "x"
        other = fmt(None if r.foreign_cpu_util is None else r.foreign_cpu_util * 100, ".0f")
        cvi = r.compute_vs_inprocess
        lines.append(
            f"| {r.system} | {r.concurrency} | {fmt(r.throughput, ',.0f')} "
            f"| {fmt(r.p50_ms, '.2f')} | {fmt(r.p90_ms, '.2f')} | {fmt(r.p99_ms, '.2f')} "
            f"| {r.errors} | {ratio} | {p50r} | {p99r} | {per_tier(r.cpu_s_per_1k, '.3f')} "
            f"| {per_tier(r.wakeups_per_req, '.1f')} "
            f"| {fmt(r.client_cpu_s_per_1k, '.3f')} | {other}% "
            f"| {per_tier(r.rss_mb, '.0f', total=False)} "
            f"| {fmt(r.mean_batch, '.2f')} | {fmt(r.compute_us_per_row, '.1f')} "
            f"| {fmt(r.inprocess_us_per_row, '.1f')} "
            f"| {fmt(cvi, '.2f') + 'x' if cvi is not None else '-'} |"
        )
    return lines


def goal_line(g: Goal) -> str:
    """``- **PASS** <goal>: 1.62x (target >= 1.5x; median of 3 paired rounds)``."""
    if g.value is None:
        return f"- **{g.verdict}** {g.text}: {g.detail}"
    op = "<=" if g.at_most else ">="
    return f"- **{g.verdict}** {g.text}: {g.value:.2f}x (target {op} {g.target:g}x; {g.detail})"


def curve_cost_lines(summary: list[SummaryRow], model: str) -> list[str]:
    """What CURVE on the fabric costs: ``ours_curve`` against ``ours`` at each concurrency
    (each against the bare server of its own round, so the host's drift cancels)."""
    return cost_lines(summary, model, "ours_curve", "CURVE", "plain text")


def tracing_cost_lines(summary: list[SummaryRow], model: str) -> list[str]:
    """What tracing 1 % of the calls costs: ``ours_traced`` against ``ours`` (tracing off)."""
    return cost_lines(summary, model, "ours_traced", "Tracing 1 %", "tracing off")


def cost_lines(
    summary: list[SummaryRow], model: str, variant: str, label: str, plain_label: str
) -> list[str]:
    """``variant`` of our stack against ``ours`` at each concurrency, each taken against the
    bare server of its own round."""
    rows = {(r.system, r.concurrency): r for r in summary if r.model == model and r.rounds}
    out = []
    for (system, c), other in sorted(rows.items()):
        plain = rows.get(("ours", c))
        if system != variant or plain is None:
            continue
        if other.throughput_vs_bare and plain.throughput_vs_bare:
            tput = other.throughput_vs_bare / plain.throughput_vs_bare
            p50 = (other.p50_minus_bare_ms or 0.0) - (plain.p50_minus_bare_ms or 0.0)
            out.append(
                f"- {label} at c={c}: {tput:.2f}x the req/s of {plain_label}, p50 {p50:+.2f} ms"
            )
    return [*out, ""] if out else []


TABLE_NOTES = [
    "CPU s per 1k req = CPU ms per request (utime+stime over the measured window, each process "
    "with its descendants). wake-ups/req = voluntary context switches per request, per server "
    "process (all threads). RSS MB = resident memory at the end of the window (process tree). "
    "'other CPU' = CPU (% of one core) used during the window by processes this run did not start.",
    "mean batch = rows per executed batch, compute µs/row = the server's own compute time "
    "(`get_inference_statistics`: Σ `batch_stats[b].compute_infer.ns` / rows) over the window; "
    "in-process µs/row = the same batches (same sizes, same counts) timed on the model called "
    "directly (`bench.inprocess`, one torch thread); compute vs in-process = their ratio "
    "(goal ≤ 1.2x).",
]


def batch_size_table(report: Report, model: str, system: str = "ours", top: int = 10) -> list[str]:
    """Per executed batch size (over every concurrency): server vs in-process µs per call."""
    ip = report.inprocess.get(model) or {}
    agg: dict[int, list[int]] = {}
    infer_ns = 0.0
    inferences = 0
    for rnd in report.rounds:
        for r in rnd.results:
            if not isinstance(r, Measurement) or (r.system, r.model) != (system, model):
                continue
            if not r.compute:
                continue
            for s, v in r.compute.sizes.items():
                cur = agg.setdefault(s, [0, 0])
                cur[0] += v.n
                cur[1] += v.ns
            t = r.compute.triton_infer_us_per_inference
            if t is not None and r.compute.rows:
                infer_ns += t * 1e3 * r.compute.rows
                inferences += r.compute.rows
    if not agg or "batches" not in ip:
        return []
    total_ns = sum(ns for _, ns in agg.values())
    lines = [
        f"Executed batches of `{model}` on {system} (all concurrencies), the {top} sizes with the "
        "most compute time; in-process µs/call marked ~ is interpolated between measured sizes.",
        "",
        "| batch rows | batches | share of compute | server µs/call | in-process µs/call "
        "| server µs/row | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (n, ns) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        us, interp = inprocess_call_us(ip, s)
        call = ns / n / 1e3
        lines.append(
            f"| {s} | {n:,} | {ns / total_ns * 100:.0f}% | {call:.1f} "
            f"| {'~' if interp else ''}{fmt(us, '.1f')} | {call / s:.1f} "
            f"| {fmt(None if not us else call / us, '.2f')}x |"
        )
    if inferences:
        lines += [
            "",
            "`inference_stats.compute_infer.ns / inference_count` = "
            f"{infer_ns / inferences / 1e3:.1f} µs: Triton (and our worker) charge every request "
            "its whole batch's compute time, so "
            "this is the mean batch time a request waited on, not a per-row cost; the per-row "
            "figures above come from `batch_stats`.",
        ]
    return lines


def inprocess_section(report: Report, models: list[str]) -> list[str]:
    """Each model timed in-process, or why not."""
    from bench.inprocess import to_markdown as ip_md

    lines = ["## Models in-process (one torch thread, no serving)", ""]
    for model in models:
        ip: dict[str, Any] = report.inprocess.get(model) or {}
        lines += [f"### `{model}`", ""]
        if "batches" in ip:
            lines += [
                f"`{Path(ip['model_file']).name}` of `{model}`, width {ip.get('width')}, "
                f"torch {ip['torch']}",
                "",
                ip_md(ip),
                "",
            ]
        else:
            lines += [f"failed: {ip.get('error', 'not run')}", ""]
    return lines


def failures_section(report: Report) -> list[str]:
    """Failed points, error samples, systems that did not start, sanity errors and notes."""
    failures: list[tuple[str, object, str]] = [
        (f"{r.system} {r.model}", r.concurrency, e) for r in report.summary for e in r.failed
    ]
    for r in report.summary:
        if r.errors:
            for s in r.error_samples:
                failures.append((f"{r.system} {r.model}", r.concurrency, f"sample: {s}"))
    failures += [
        (f"{res.system} {res.model}".strip(), "-", res.error)
        for rnd in report.rounds
        for res in rnd.results
        if isinstance(res, StartFailure)
    ]
    if report.repo_error:
        failures.append(("repo", "-", report.repo_error))
    for rnd in report.rounds:
        for name, info in rnd.info.items():
            if info.sanity_error:
                failures.append((name, "sanity", info.sanity_error))
    notes: list[Note] = report.notes
    failures += notes
    if not failures:
        return []
    lines = ["## Failures and notes", ""]
    for system, c, err in failures:
        lines.append(f"- **{system} c={c}**: " + str(err).strip().replace("\n", "\n  "))
    return [*lines, ""]


def idle_line(report: Report) -> str | None:
    """Idle CPU and memory of every system, medians over rounds."""
    idle: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    for rnd in report.rounds:
        samples: list[tuple[str, dict[str, float], dict[str, float]]] = [
            (r.system, r.idle_cpu_util, r.idle_rss_mb)
            for r in rnd.results
            if isinstance(r, IdleSample)
        ]
        samples += [(s, i.idle_cpu_util, i.idle_rss_mb) for s, i in rnd.info.items()]
        for system, cpu, mem in samples:
            for name, util in cpu.items():
                idle.setdefault(f"{system} {name}", []).append(util)
            for name, mb in mem.items():
                rss.setdefault(f"{system} {name}", []).append(mb)
    if not idle:
        return None
    return (
        "Idle (up, nothing sent; median over rounds): CPU % of one core "
        + ", ".join(f"{n} {(median(v) or 0.0) * 100:.1f}%" for n, v in idle.items())
        + "; RSS MB "
        + ", ".join(f"{n} {median(v) or 0.0:.0f}" for n, v in rss.items())
        + "."
    )


def git_text(meta: Mapping[str, Any]) -> str:
    """``git abc123`` plus the files the measured working tree changed."""
    dirty = meta.get("git_dirty") or []
    if not dirty:
        return f"git {meta['git']}"
    shown = ", ".join(f"`{f}`" for f in dirty[:6]) + (" ..." if len(dirty) > 6 else "")
    return f"git {meta['git']} plus uncommitted changes to {shown}"


def meta_line(meta: Mapping[str, Any]) -> str:
    """How, where and when the run measured."""
    return (
        f"Run {meta['timestamp']} (UTC), {git_text(meta)}, {meta['cpus']} CPUs, "
        f"{meta['rounds']} round(s) x {meta['duration_s']:g} s measured after "
        f"{meta['warmup_s']:g} s warm-up per point, {meta['client_processes']} load generator "
        f"processes (tritonclient.grpc.aio, closed loop, one FP32 [1, width] request per call), "
        f"{meta.get('elapsed_s', 0):.0f} s in all. Medians over rounds; ratios are against "
        "baselines measured in the same round."
    )


def to_markdown(report: Report, extra: list[str] | None = None) -> str:
    """The ``run-latest.md`` section; ``extra`` (Markdown lines) goes after the models' tables."""
    meta = report.meta
    models: list[str] = meta["models"]
    lines = ["## Our stack against the bare gRPC server (`make bench`)", "", meta_line(meta), ""]
    for model in models:
        lines += [f"### `{model}`: {MODEL_BLURB.get(model, '')}", ""]
        lines += results_table(report.summary, model)
        lines.append("")
        lines += curve_cost_lines(report.summary, model)
        lines += routing_cost_lines(report.summary, model)
        lines += tracing_cost_lines(report.summary, model)
        bs = batch_size_table(report, model)
        if bs:
            lines += [*bs, ""]
    lines += extra or []
    return "\n".join([*lines, *report_tail(report, models)]) + "\n"


def report_tail(report: Report, models: list[str]) -> list[str]:
    """What every benchmark report ends with: the plot, the table notes, idle CPU, failures
    and the in-process comparison."""
    lines: list[str] = []
    if report.meta.get("plot"):
        lines += [f"![throughput against p99 latency]({report.meta['plot']})", ""]
    lines += TABLE_NOTES
    idle = idle_line(report)
    if idle:
        lines.append(idle)
    lines.append("")
    lines += failures_section(report)
    lines += inprocess_section(report, models)
    return lines
