"""The CURVE cost line of ``make bench``: our stack with CURVE against plain text, each taken
against the bare server of its own round."""

from __future__ import annotations

from bench.markdown import curve_cost_lines, tracing_cost_lines
from bench.results import SummaryRow


def _row(system: str, c: int, vs_bare: float, p50_over_ms: float) -> SummaryRow:
    return SummaryRow(
        system=system,
        model="mlp",
        concurrency=c,
        rounds=2,
        failed=[],
        throughput_vs_bare=vs_bare,
        p50_minus_bare_ms=p50_over_ms,
    )


def test_curve_cost_is_the_ratio_to_plain_text_per_concurrency() -> None:
    rows = [
        _row("bare", 1, 1.0, 0.0),
        _row("ours", 1, 0.40, 0.80),
        _row("ours_curve", 1, 0.36, 0.95),
        _row("ours", 64, 0.60, 9.0),
        _row("ours_curve", 64, 0.48, 11.5),
    ]
    assert curve_cost_lines(rows, "mlp") == [
        "- CURVE at c=1: 0.90x the req/s of plain text, p50 +0.15 ms",
        "- CURVE at c=64: 0.80x the req/s of plain text, p50 +2.50 ms",
        "",
    ]


def test_no_line_without_a_curve_measurement() -> None:
    assert curve_cost_lines([_row("ours", 1, 0.4, 0.8)], "mlp") == []
    assert curve_cost_lines([_row("ours_curve", 1, 0.4, 0.8)], "wide_mlp") == []


def test_tracing_cost_is_the_ratio_to_tracing_off() -> None:
    rows = [_row("ours", 64, 0.60, 9.0), _row("ours_traced", 64, 0.594, 9.2)]
    assert tracing_cost_lines(rows, "mlp") == [
        "- Tracing 1 % at c=64: 0.99x the req/s of tracing off, p50 +0.20 ms",
        "",
    ]
    assert tracing_cost_lines([_row("ours_curve", 64, 0.5, 9.0)], "mlp") == []
