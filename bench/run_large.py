"""The large-payload points of ``make bench``: one round of ``bench.large``'s measurement
(64 KiB at c=16, 1 MiB at c=8, 16 MiB at c=4; our stack against the bare echo server, same
client, back to back) after the ``mlp`` points, and the issue's goals for them.

The measuring is ``bench.large``'s own (``run_round`` without its shared-memory and peak-RSS
extras); this module adds the window lengths ``make bench`` uses, the ratio per point and the
PASS/FAIL lines, all pure functions of the records ``bench.large.measure`` returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import large
from bench.lifecycle import StackError
from bench.markdown import fmt, goal_line
from bench.results import Goal

KIB, MIB = large.KIB, large.MIB
GOALS_X: dict[int, float] = {1 * MIB: 0.9, 16 * MIB: 0.85}
"""Our throughput ÷ the bare echo server's, at least, per payload (issue 14)."""
QUICK_WINDOW_S = (2.0, 1.0)
FULL_WINDOW_S = (6.0, 2.0)
"""(measured, warm-up) seconds per point; ``bench.large`` triples both at 16 MiB."""


def large_args(quick: bool) -> argparse.Namespace:
    """What ``bench.large.measure`` reads from its arguments: the window lengths."""
    duration, warmup = QUICK_WINDOW_S if quick else FULL_WINDOW_S
    return argparse.Namespace(duration=duration, warmup=warmup)


def run_large(quick: bool, repo: Path, log_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """One round of the large points; the records and, where the systems would not start or a
    point broke off, the error."""
    try:
        return large.run_round(large_args(quick), 0, repo, log_dir, extras=False), None
    except (StackError, OSError, ValueError) as exc:
        return [], f"{type(exc).__name__}: {exc}"


def _find(results: list[dict[str, Any]], system: str, payload: int, conc: int) -> dict | None:
    for r in results:
        key = (r.get("system"), r.get("payload_bytes"), r.get("concurrency"), r.get("shm"))
        if key == (system, payload, conc, False) and not r.get("rss_point"):
            return r
    return None


def point_ratio(results: list[dict[str, Any]], payload: int, conc: int) -> float | None:
    """Ours ÷ bare throughput at one point; None where either is missing or has errors."""
    b, o = _find(results, "bare", payload, conc), _find(results, "ours", payload, conc)
    if b is None or o is None or b.get("errors") or o.get("errors"):
        return None
    bt, ot = b.get("throughput"), o.get("throughput")
    return ot / bt if bt and ot is not None else None


def large_goals(results: list[dict[str, Any]], error: str | None) -> list[Goal]:
    """One goal per payload of ``GOALS_X``: PASS/FAIL on this run's ratio."""
    out = []
    for payload, conc in large.POINTS:
        target = GOALS_X.get(payload)
        if target is None:
            continue
        text = f"large payloads: {_size(payload)} at c={conc} >= {target:g}x the bare echo server"
        name = "large_" + _size(payload).replace(" ", "")
        ratio = point_ratio(results, payload, conc)
        if ratio is None:
            detail = error or "no ratio (a point is missing or had errors)"
            out.append(Goal(name=name, text=text, verdict="NOT RUN", target=target, detail=detail))
            continue
        out.append(
            Goal(
                name=name,
                text=text,
                verdict="PASS" if ratio >= target else "FAIL",
                value=ratio,
                target=target,
                detail="one round; the issue counts the worse of two (`make bench-large`)",
            )
        )
    return out


def large_lines(results: list[dict[str, Any]], goals: list[Goal], error: str | None) -> list[str]:
    """The Markdown section: each point on both systems, the ratio, and the goal lines."""
    lines = [
        f"### Large payloads: `{large.MODEL}` against the bare echo server (one round)",
        "",
    ]
    if error:
        lines += [f"**Not measured**: {error}", ""]
    lines += [
        "| payload | c | bare req/s | ours req/s | ours ÷ bare | goal | bare p50 ms | ours p50 ms "
        "| errors (bare/ours) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for payload, conc in large.POINTS:
        b, o = _find(results, "bare", payload, conc), _find(results, "ours", payload, conc)
        if b is None and o is None:
            continue
        ratio = point_ratio(results, payload, conc)
        goal = GOALS_X.get(payload)
        lines.append(
            f"| {_size(payload)} | {conc} | {fmt(_get(b, 'throughput'), '.1f')} "
            f"| {fmt(_get(o, 'throughput'), '.1f')} "
            f"| {fmt(ratio, '.2f')}{'x' if ratio is not None else ''} "
            f"| {'>= ' + format(goal, 'g') + 'x' if goal else '-'} "
            f"| {fmt(_get(b, 'p50_ms'), '.2f')} | {fmt(_get(o, 'p50_ms'), '.2f')} "
            f"| {fmt(_get(b, 'errors'), 'd')}/{fmt(_get(o, 'errors'), 'd')} |"
        )
    lines += ["", *[goal_line(g) for g in goals], ""]
    return lines


def _get(r: dict[str, Any] | None, key: str) -> Any:
    return None if r is None else r.get(key)


def _size(payload: int) -> str:
    return f"{payload // MIB} MiB" if payload >= MIB else f"{payload // KIB} KiB"
