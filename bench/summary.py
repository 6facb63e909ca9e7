"""Per (model, system, concurrency): medians over rounds, ratios to the bare server taken within
a round first (a ratio of medians from different rounds would mix two machines' moods)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from bench.results import Measurement, Round, SummaryRow, find


def median(xs: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def within_rounds(
    rounds: list[Round],
    mine: str,
    theirs: str,
    model: str,
    c: int,
    value: Callable[[Measurement, Measurement], float | None],
) -> float | None:
    """Median over rounds of ``value(mine, theirs)``, each taken within one round."""
    per_round = []
    for rnd in rounds:
        a = find(rnd.results, mine, model, c)
        b = find(rnd.results, theirs, model, c)
        if a and b and a.error is None and b.error is None:
            v = value(a, b)
            if v is not None:
                per_round.append(v)
    return median(per_round)


def _ratios(recs: list[tuple[Measurement, Measurement | None]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"tput": [], "p50": [], "p50d": [], "p99": []}
    for mine, bare in recs:
        if not (bare and bare.throughput and mine.p50_ms is not None):
            continue
        out["tput"].append(mine.throughput / bare.throughput)
        if bare.p50_ms:
            out["p50"].append(mine.p50_ms / bare.p50_ms)
            out["p50d"].append(mine.p50_ms - bare.p50_ms)
        if bare.p99_ms and mine.p99_ms is not None:
            out["p99"].append(mine.p99_ms / bare.p99_ms)
    return out


def summarize_point(
    system: str, model: str, c: int, pairs: list[tuple[Measurement, Measurement | None]]
) -> SummaryRow:
    """One row from each round's (measurement, the bare server's at the same point)."""
    recs = [m for m, _ in pairs]
    ok = [r for r in recs if r.error is None]
    ratios = _ratios(pairs)
    names = sorted({n for r in ok for n in r.cpu_s_per_1k})
    cmp = [r.compute_vs_inprocess for r in ok if r.compute_vs_inprocess]
    return SummaryRow(
        system=system,
        model=model,
        concurrency=c,
        rounds=len(ok),
        failed=[r.error for r in recs if r.error is not None],
        throughput=median(r.throughput for r in ok),
        p50_ms=median(r.p50_ms for r in ok),
        p90_ms=median(r.p90_ms for r in ok),
        p99_ms=median(r.p99_ms for r in ok),
        errors=sum(r.errors for r in ok),
        error_samples=[s for r in ok for s in r.error_samples][:3],
        throughput_vs_bare=median(ratios["tput"]),
        p50_vs_bare=median(ratios["p50"]),
        p50_minus_bare_ms=median(ratios["p50d"]),
        p99_vs_bare=median(ratios["p99"]),
        cpu_s_per_1k={n: median(r.cpu_s_per_1k.get(n) for r in ok) for n in names},
        client_cpu_s_per_1k=median(r.client_cpu_s_per_1k for r in ok),
        wakeups_per_req={n: median(r.wakeups_per_req.get(n) for r in ok) for n in names},
        rss_mb={n: median(r.rss_mb.get(n) for r in ok) for n in names},
        foreign_cpu_util=median(r.foreign_cpu_util for r in ok),
        mean_batch=median(r.mean_batch for r in ok),
        compute_us_per_row=median(x.server_us_per_row for x in cmp),
        inprocess_us_per_row=median(x.inprocess_us_per_row for x in cmp),
        compute_vs_inprocess=median(x.ratio for x in cmp),
        triton_infer_us_per_inference=median(
            r.compute.triton_infer_us_per_inference for r in ok if r.compute
        ),
    )


def summarize(
    rounds: list[Round], concurrencies: list[int], systems: list[str], models: list[str]
) -> list[SummaryRow]:
    """Every (model, system, concurrency) measured in at least one round."""
    rows = []
    for model in models:
        for system in systems:
            for c in concurrencies:
                pairs = []
                for rnd in rounds:
                    mine = find(rnd.results, system, model, c)
                    if mine:
                        pairs.append((mine, find(rnd.results, "bare", model, c)))
                if pairs:
                    rows.append(summarize_point(system, model, c, pairs))
    return rows
