"""Our stack against PyTriton in ``make bench``: CPU ms per call of each system (summed over all
of its processes) and the issue's two goals against PyTriton, with their verdicts.

Pure functions over the rounds a run recorded; ``bench.run`` calls them once at the end.
Every comparison is taken within one round first (both systems measured seconds apart), then
the median over rounds is what the goal is checked against.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from bench.markdown import fmt, goal_line
from bench.results import CpuPerCall, Goal, Measurement, Round, StartFailure, find
from bench.summary import median

PEER = "pytriton"
OURS = "ours"
MODEL = "mlp"
OURS_TIERS = ("frontend", "broker", "worker")
CPU_CONCURRENCIES = (1, 64)
GOAL_C = 64
THROUGHPUT_GOAL_X = 1.5
GOAL_ROUNDS = 3
PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"


def total_cpu_ms(m: Measurement, names: tuple[str, ...] | None = None) -> float | None:
    """CPU ms per call summed over ``names`` (every process of the system when None).

    ``cpu_s_per_1k`` is CPU seconds per 1,000 calls, i.e. ms per call. None where a process
    that should count has no figure (a total that silently left one out would flatter)."""
    wanted = list(m.cpu_s_per_1k) if names is None else list(names)
    if m.error is not None or not wanted:
        return None
    vals = [m.cpu_s_per_1k.get(n) for n in wanted]
    known = [v for v in vals if v is not None]
    return sum(known) if len(known) == len(vals) else None


def _names(system: str) -> tuple[str, ...] | None:
    return OURS_TIERS if system == OURS else None


def cpu_per_call(rounds: list[Round], system: str, model: str, c: int) -> CpuPerCall | None:
    """``system``'s CPU ms per call at ``c``: median over rounds of each round's sum."""
    totals: list[float] = []
    per_proc: dict[str, list[float]] = {}
    for rnd in rounds:
        m = find(rnd.results, system, model, c)
        total = None if m is None else total_cpu_ms(m, _names(system))
        if m is None or total is None:
            continue
        totals.append(total)
        for name in _names(system) or tuple(m.cpu_s_per_1k):
            v = m.cpu_s_per_1k.get(name)
            if v is not None:
                per_proc.setdefault(name, []).append(v)
    total_med = median(totals)
    if total_med is None:
        return None
    return CpuPerCall(
        system=system,
        model=model,
        concurrency=c,
        rounds=len(totals),
        total_ms=total_med,
        per_process_ms={n: median(vs) or 0.0 for n, vs in sorted(per_proc.items())},
    )


def paired(
    rounds: list[Round],
    model: str,
    c: int,
    value: Callable[[Measurement, Measurement], float | None],
) -> list[float]:
    """``value(ours, pytriton)`` of every round where both measured ``c`` without error."""
    out = []
    for rnd in rounds:
        a, b = find(rnd.results, OURS, model, c), find(rnd.results, PEER, model, c)
        if a and b and a.error is None and b.error is None:
            v = value(a, b)
            if v is not None:
                out.append(v)
    return out


def _cpu_ratio(a: Measurement, b: Measurement) -> float | None:
    mine, theirs = total_cpu_ms(a, OURS_TIERS), total_cpu_ms(b)
    return mine / theirs if mine is not None and theirs else None


def _tput_ratio(a: Measurement, b: Measurement) -> float | None:
    return a.throughput / b.throughput if a.throughput and b.throughput else None


def why_not_run(rounds: list[Round], notes: list[tuple[str, str, str]]) -> str:
    """Why PyTriton has no measurement: its start failures and notes, or a plain statement."""
    reasons = [
        r.error.strip().splitlines()[0] if r.error.strip() else "failed to start"
        for rnd in rounds
        for r in rnd.results
        if isinstance(r, StartFailure) and r.system == PEER
    ]
    reasons += [text.strip().splitlines()[0] for subject, _, text in notes if subject == PEER]
    unique = list(dict.fromkeys(reasons))
    return "; ".join(unique) if unique else "PyTriton was not measured in this run"


def peer_goals(
    rounds: list[Round], notes: list[tuple[str, str, str]], model: str = MODEL
) -> list[Goal]:
    """The two goals against PyTriton at c=64, checked on the medians of paired rounds."""
    cpu = paired(rounds, model, GOAL_C, _cpu_ratio)
    tput = paired(rounds, model, GOAL_C, _tput_ratio)
    cpu_text = f"ours total CPU per call at c={GOAL_C} <= PyTriton's"
    tput_text = (
        f"c={GOAL_C} throughput >= {THROUGHPUT_GOAL_X:g}x PyTriton "
        f"(median of {GOAL_ROUNDS} paired rounds)"
    )
    if not cpu and not tput:
        why = why_not_run(rounds, notes)
        return [
            Goal(
                name="cpu_vs_pytriton",
                text=cpu_text,
                verdict=NOT_RUN,
                target=1.0,
                at_most=True,
                detail=why,
            ),
            Goal(
                name="throughput_vs_pytriton",
                text=tput_text,
                verdict=NOT_RUN,
                target=THROUGHPUT_GOAL_X,
                detail=why,
            ),
        ]
    return [
        _goal("cpu_vs_pytriton", cpu_text, median(cpu), 1.0, len(cpu), at_most=True),
        _goal("throughput_vs_pytriton", tput_text, median(tput), THROUGHPUT_GOAL_X, len(tput)),
    ]


def _goal(
    name: str, text: str, value: float | None, target: float, n: int, at_most: bool = False
) -> Goal:
    if value is None:
        return Goal(name=name, text=text, verdict=NOT_RUN, target=target, at_most=at_most,
                    detail="no figures")  # fmt: skip
    ok = value <= target if at_most else value >= target
    detail = f"median of {n} paired round{'s' if n != 1 else ''}"
    if n < GOAL_ROUNDS:
        detail += f"; the goal asks for {GOAL_ROUNDS} (run with --rounds {GOAL_ROUNDS})"
    return Goal(
        name=name, text=text, verdict=PASS if ok else FAIL, value=value, target=target,
        at_most=at_most, detail=detail,
    )  # fmt: skip


def cpu_rows(rounds: list[Round], model: str = MODEL) -> list[CpuPerCall]:
    """Ours and PyTriton at each of ``CPU_CONCURRENCIES``, where measured; ours carries the
    paired ratio (the figure the CPU goal is checked against)."""
    rows = []
    for c in CPU_CONCURRENCIES:
        for system in (OURS, PEER):
            row = cpu_per_call(rounds, system, model, c)
            if row is not None and system == OURS:
                row = msgspec.structs.replace(
                    row, vs_peer=median(paired(rounds, model, c, _cpu_ratio))
                )
            if row is not None:
                rows.append(row)
    return rows


def peer_cpu_lines(rows: list[CpuPerCall], goals: list[Goal], model: str = MODEL) -> list[str]:
    """The Markdown section: CPU ms per call, ours against PyTriton, and the goal lines."""
    lines = [f"### CPU per call: ours against PyTriton (`{model}`, same run)", ""]
    by = {(r.system, r.concurrency): r for r in rows}
    peer_rows = [r for r in rows if r.system == PEER]
    if not peer_rows:
        why = next((g.detail for g in goals if g.verdict == NOT_RUN), "not measured")
        lines += [f"**PyTriton did not run, so there is nothing to compare with**: {why}.", ""]
    lines += [
        "| conc. | ours CPU ms/call (frontend+broker+worker) | PyTriton CPU ms/call "
        "(all its processes) | ours ÷ PyTriton, paired | rounds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in CPU_CONCURRENCIES:
        o, p = by.get((OURS, c)), by.get((PEER, c))
        if o is None and p is None:
            continue
        ratio = o.vs_peer if o else None
        lines.append(
            f"| {c} | {_cell(o)} | {_cell(p)} | {fmt(ratio, '.2f')}"
            f"{'x' if ratio is not None else ''} | {min(r.rounds for r in (o, p) if r)} |"
        )
    lines += [
        "",
        "CPU ms per call = utime+stime over the measured window / calls, median over rounds of "
        "each round's sum (the load generator is in neither); ours ÷ PyTriton = median over "
        "rounds of each round's ratio, as the goal takes it. PyTriton's processes are its "
        "whole process tree and session, by command name: `python` = the PyTriton process "
        "that runs the model (with its multiprocessing resource tracker), `tritonserver`, "
        "`triton_python_backend_stub` = Triton's Python backend running PyTriton's proxy model, "
        "`python3` = the stub's multiprocessing helpers. Goals (issue 14):",
        "",
        *[goal_line(g) for g in goals],
        "",
    ]
    return lines


def _cell(r: CpuPerCall | None) -> str:
    if r is None:
        return "-"
    parts = " + ".join(f"{n} {v:.3f}" for n, v in r.per_process_ms.items())
    return f"{r.total_ms:.3f} ({parts})" if len(r.per_process_ms) > 1 else f"{r.total_ms:.3f}"
