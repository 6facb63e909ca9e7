"""The large-payload points of ``make bench``: ratio per point, the 1 MiB and 16 MiB goals and the
Markdown section, from records shaped as ``bench.large.measure`` returns them."""

from __future__ import annotations

from typing import Any

import pytest

from bench.large import MIB
from bench.run_large import large_args, large_goals, large_lines, point_ratio

KIB = 1024


def point(system: str, payload: int, c: int, rps: float, errors: int = 0, **extra: Any) -> dict:
    return {
        "round": 0, "system": system, "payload_bytes": payload, "concurrency": c, "shm": False,
        "throughput": rps, "p50_ms": 1000 * c / rps, "p99_ms": 2000 * c / rps,
        "errors": errors, "cpu_ms_per_call": {}, "peak_rss_mb": {}, **extra,
    }  # fmt: skip


def one_round(ours_1m: float = 95.0, ours_16m: float = 8.0) -> list[dict]:
    return [
        point("bare", 64 * KIB, 16, 2000.0),
        point("ours", 64 * KIB, 16, 1500.0),
        point("ours", 1 * MIB, 8, ours_1m),
        point("bare", 1 * MIB, 8, 100.0),
        point("bare", 16 * MIB, 4, 10.0),
        point("ours", 16 * MIB, 4, ours_16m),
        # bench.large's extras, which make bench does not run, never count as the point itself.
        point("ours", 16 * MIB, 4, 1.0, shm=True),
        point("ours", 16 * MIB, 4, 1.0, rss_point=True),
    ]


def test_ratio_is_ours_over_bare_at_the_same_point() -> None:
    results = one_round()
    assert point_ratio(results, 64 * KIB, 16) == pytest.approx(0.75)
    assert point_ratio(results, 1 * MIB, 8) == pytest.approx(0.95)
    assert point_ratio(results, 16 * MIB, 4) == pytest.approx(0.8)
    assert point_ratio(results, 16 * MIB, 32) is None


def test_a_point_with_errors_has_no_ratio() -> None:
    results = [point("bare", MIB, 8, 100.0), point("ours", MIB, 8, 120.0, errors=3)]
    assert point_ratio(results, MIB, 8) is None


def test_goals_pass_and_fail_on_the_ratios() -> None:
    one, sixteen = large_goals(one_round(), None)
    assert (one.name, one.verdict, one.target) == ("large_1MiB", "PASS", 0.9)
    assert one.value == pytest.approx(0.95)
    assert (sixteen.name, sixteen.verdict, sixteen.target) == ("large_16MiB", "FAIL", 0.85)
    assert sixteen.value == pytest.approx(0.8)
    assert sixteen.text == "large payloads: 16 MiB at c=4 >= 0.85x the bare echo server"
    _, sixteen = large_goals(one_round(ours_16m=8.5), None)
    assert sixteen.verdict == "PASS"


def test_goals_not_run_say_why() -> None:
    one, sixteen = large_goals([], "StackError: frontend exited 2")
    assert (one.verdict, sixteen.verdict) == ("NOT RUN", "NOT RUN")
    assert one.detail == "StackError: frontend exited 2"
    (one, _) = large_goals([point("bare", MIB, 8, 100.0)], None)
    assert one.detail == "no ratio (a point is missing or had errors)"


def test_section_has_every_point_and_the_goal_lines() -> None:
    results = one_round()
    lines = large_lines(results, large_goals(results, None), None)
    assert "| 64 KiB | 16 | 2000.0 | 1500.0 | 0.75x | - | 8.00 | 10.67 | 0/0 |" in lines
    assert "| 1 MiB | 8 | 100.0 | 95.0 | 0.95x | >= 0.9x | 80.00 | 84.21 | 0/0 |" in lines
    assert "| 16 MiB | 4 | 10.0 | 8.0 | 0.80x | >= 0.85x | 400.00 | 500.00 | 0/0 |" in lines
    assert (
        "- **FAIL** large payloads: 16 MiB at c=4 >= 0.85x the bare echo server: 0.80x "
        "(target >= 0.85x; one round; the issue counts the worse of two (`make bench-large`))"
    ) in lines
    failed = large_lines([], large_goals([], "StackError: no"), "StackError: no")
    assert "**Not measured**: StackError: no" in failed


def test_quick_windows_are_shorter() -> None:
    quick, full = large_args(True), large_args(False)
    assert (quick.duration, quick.warmup) == (2.0, 1.0)
    assert (full.duration, full.warmup) == (6.0, 2.0)
