"""The benchmark's pure parts: batch deltas, summaries, in-process comparison, JSON, Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from bench.batchstats import batch_delta
from bench.compare import compare_compute, inprocess_call_us, inprocess_sizes
from bench.markdown import failures_section, fmt, per_tier, results_table
from bench.measure import Mark, window_costs
from bench.results import (
    BatchSnapshot,
    ComputeDelta,
    IdleSample,
    Measurement,
    Report,
    Round,
    SizeCompute,
    StartFailure,
    find,
    to_json,
)
from bench.run import drop_missing_optional, parse_args
from bench.summary import median, summarize


def point(system: str, c: int, tput: float, p50: float, p99: float) -> Measurement:
    return Measurement(
        system=system,
        model="mlp",
        concurrency=c,
        throughput=tput,
        p50_ms=p50,
        p99_ms=p99,
        requests=int(tput),
    )


def test_batch_delta_counts_what_ran_between_snapshots() -> None:
    before = BatchSnapshot({1: (10, 1000), 4: (2, 800)}, 18, 12, 5000)
    after = BatchSnapshot({1: (15, 1600), 4: (2, 800), 8: (3, 2400)}, 47, 20, 9000)
    d = batch_delta(before, after)
    assert d is not None
    assert d.sizes == {1: SizeCompute(5, 600), 8: SizeCompute(3, 2400)}
    assert (d.rows, d.batches, d.ns) == (29, 8, 3000)
    assert d.mean_batch == 29 / 8
    assert d.us_per_row == 3000 / 29 / 1e3
    assert d.triton_infer_us_per_inference == 4000 / 29 / 1e3
    assert batch_delta(None, after) is None


def test_summary_takes_ratios_within_a_round_then_the_median() -> None:
    rounds = [
        Round(round=0, results=[point("bare", 1, 100, 1.0, 2.0), point("ours", 1, 50, 2.0, 4.0)]),
        Round(round=1, results=[point("bare", 1, 200, 1.0, 2.0), point("ours", 1, 150, 1.5, 3.0)]),
        Round(round=2, results=[point("bare", 1, 100, 1.0, 1.0), point("ours", 1, 90, 1.0, 3.0)]),
    ]
    rows = summarize(rounds, [1, 64], ["bare", "ours"], ["mlp"])
    assert [(r.system, r.concurrency) for r in rows] == [("bare", 1), ("ours", 1)]
    ours = rows[1]
    assert ours.rounds == 3
    assert ours.throughput == 90
    assert ours.throughput_vs_bare == 0.75  # median of 0.5, 0.75, 0.9
    assert ours.p99_vs_bare == 2.0  # median of 2, 1.5, 3
    assert ours.p50_minus_bare_ms == 0.5


def test_summary_lists_failed_points_and_skips_unmeasured_ones() -> None:
    bad = Measurement(system="ours", model="mlp", concurrency=8, error="boom")
    rows = summarize([Round(round=0, results=[bad])], [1, 8], ["ours"], ["mlp"])
    assert len(rows) == 1
    assert (rows[0].rounds, rows[0].failed, rows[0].throughput) == (0, ["boom"], None)
    assert "failed" in results_table(rows, "mlp")[2]


def test_median_ignores_missing_values() -> None:
    assert median([None, 3.0, 1.0, None]) == 2.0
    assert median([None]) is None


def test_inprocess_sizes_adds_the_sizes_that_carry_the_compute_time() -> None:
    compute = ComputeDelta(
        sizes={3: SizeCompute(10, 9000), 5: SizeCompute(1, 10), 64: SizeCompute(1, 1000)},
        rows=99,
        batches=12,
        ns=10010,
    )
    m = Measurement(system="ours", model="mlp", concurrency=8, compute=compute)
    sizes = inprocess_sizes([m, StartFailure(system="bare", error="x")], "mlp")
    assert 3 in sizes and 5 not in sizes
    assert {1, 2, 4, 8, 16, 32, 64} <= set(sizes)


def test_inprocess_time_interpolates_between_measured_sizes() -> None:
    ip = {
        "batches": [{"batch_size": 1, "us_per_call": 10.0}, {"batch_size": 4, "us_per_call": 40.0}]
    }
    assert inprocess_call_us(ip, 1) == (10.0, False)
    assert inprocess_call_us(ip, 2) == (20.0, True)
    assert inprocess_call_us(ip, 8) == (80.0, True)
    assert inprocess_call_us({}, 8) == (None, False)

    compute = ComputeDelta(sizes={2: SizeCompute(5, 200_000)}, rows=10, batches=5, ns=200_000)
    cmp = compare_compute(compute, ip)
    assert cmp is not None
    assert cmp.ratio == 2.0  # 200 µs against 5 x 20 µs
    assert cmp.interpolated_share == 1.0


def test_report_json_keeps_the_old_keys(tmp_path: Path) -> None:
    idle = IdleSample(system="bare", model="mlp", idle_cpu_util={"server": 0.0}, idle_rss_mb={})
    rnd = Round(round=0, results=[point("ours", 1, 10, 1.0, 2.0), idle])
    report = Report(meta={"timestamp": "t"}, rounds=[rnd])
    report.summary = summarize(report.rounds, [1], ["ours"], ["mlp"])
    data = json.loads(to_json(report))
    rec = data["rounds"][0]["results"][0]
    assert rec["system"] == "ours" and rec["p50_ms"] == 1.0 and "error" not in rec
    assert data["rounds"][0]["results"][1]["idle_cpu_util"] == {"server": 0.0}
    assert data["summary"][0]["throughput"] == 10
    assert find(rnd.results, "ours", "mlp", 1) is rnd.results[0]
    assert find(rnd.results, "ours", "mlp", 64) is None


def test_formatting_helpers() -> None:
    assert fmt(None, ".2f") == "-"
    assert fmt(1.234, ".1f") == "1.2"
    assert per_tier({"a": 1.0, "b": 2.0}, ".1f") == "a 1.0 · b 2.0 (Σ 3.0)"
    assert per_tier({"a": 1.0, "b": None}, ".1f") == "a 1.0 · b -"


def test_missing_optional_model_is_skipped_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "mlp").mkdir()
    report = Report(meta={})
    kept = drop_missing_optional(report, tmp_path, ["mlp", "mlp_wait"])
    assert kept == ["mlp"]
    assert report.notes[0][0] == "mlp_wait"
    assert "skipped" in failures_section(report)[2]
    (tmp_path / "mlp_wait").mkdir()
    assert drop_missing_optional(Report(meta={}), tmp_path, ["mlp", "mlp_wait"]) == [
        "mlp",
        "mlp_wait",
    ]


def test_make_bench_measures_mlp_wait_at_c1_and_c64() -> None:
    args, models = parse_args([])
    assert "mlp_wait" in models and "mlp" in models
    assert args.model_concurrency == {"mlp_wait": [1, 64]}
    args, models = parse_args(["--quick"])
    assert models == ["mlp"] and args.concurrency == [1, 64]


def test_window_costs_per_request_and_the_noise_gauge() -> None:
    a = Mark(
        t=0.0,
        busy=10.0,
        cpu={"w": 1.0},
        wakeups={"w": 5},
        rss={"w": 9.0},
        client=0.0,
        siblings=0.0,
        own=0.0,
    )
    b = Mark(
        t=2.0,
        busy=13.0,
        cpu={"w": 2.0},
        wakeups={"w": 25},
        rss={"w": 10.0},
        client=0.5,
        siblings=0.5,
        own=0.0,
    )
    costs = window_costs(a, b, requests=100)
    assert costs["cpu_s_per_1k"] == {"w": 10.0}
    assert costs["wakeups_per_req"] == {"w": 0.2}
    assert costs["foreign_cpu_util"] == 0.5  # 3 s busy, 2 s of it ours, over 2 s
    assert "compute" not in costs
    m = Measurement(system="ours", model="mlp", concurrency=1)
    full = msgspec.structs.replace(m, **costs)
    assert full.rss_mb == {"w": 10.0} and full.window_s == 2.0
