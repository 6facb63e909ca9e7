"""Ours against PyTriton in ``make bench``: CPU ms per call summed over each system's processes,
the two goals at c=64 with their verdicts, and the Markdown section, from fixture rounds."""

from __future__ import annotations

import pytest

from bench.peer_cpu import (
    NOT_RUN,
    cpu_per_call,
    cpu_rows,
    peer_cpu_lines,
    peer_goals,
    total_cpu_ms,
)
from bench.results import Measurement, Round, StartFailure

PT_PROCS = ("python", "tritonserver", "triton_python_backend_stub", "python3")


def ours(
    c: int, tput: float, frontend: float, broker: float = 0.2, worker: float = 0.3
) -> Measurement:
    # cpu_s_per_1k: CPU seconds per 1,000 calls = ms per call. The traced stack's sink and the
    # load generator never count (they are not frontend, broker or worker).
    return Measurement(
        system="ours",
        model="mlp",
        concurrency=c,
        throughput=tput,
        cpu_s_per_1k={"frontend": frontend, "broker": broker, "worker": worker, "otlp-sink": 9.0},
        client_cpu_s_per_1k=5.0,
    )


def pytriton(c: int, tput: float, per_proc: tuple[float, ...]) -> Measurement:
    return Measurement(
        system="pytriton",
        model="mlp",
        concurrency=c,
        throughput=tput,
        cpu_s_per_1k=dict(zip(PT_PROCS, per_proc, strict=True)),
    )


def three_rounds() -> list[Round]:
    # c=64: ours 1.0, 1.1, 0.9 ms/call; PyTriton 1.2, 1.0, 1.5; throughput ratios 1.6, 1.4, 1.7.
    specs = [
        (0.5, (0.5, 0.4, 0.2, 0.1), 1600.0, 1000.0),
        (0.6, (0.4, 0.3, 0.2, 0.1), 1400.0, 1000.0),
        (0.4, (0.6, 0.5, 0.3, 0.1), 1700.0, 1000.0),
    ]
    rounds = []
    for i, (front, pt, o_tput, p_tput) in enumerate(specs):
        rounds.append(
            Round(
                round=i,
                results=[
                    ours(64, o_tput, front),
                    pytriton(64, p_tput, pt),
                    ours(1, 400.0, 2.0),
                    pytriton(1, 200.0, (2.0, 1.0, 0.8, 0.2)),
                ],
            )
        )
    return rounds


def test_total_sums_the_named_tiers_or_every_process() -> None:
    assert total_cpu_ms(ours(64, 1, 0.5), ("frontend", "broker", "worker")) == pytest.approx(1.0)
    assert total_cpu_ms(pytriton(64, 1, (0.5, 0.4, 0.2, 0.1))) == pytest.approx(1.2)


def test_total_is_none_when_a_tier_has_no_figure_or_the_point_failed() -> None:
    m = Measurement(system="ours", model="mlp", concurrency=64, cpu_s_per_1k={"frontend": 0.4})
    assert total_cpu_ms(m, ("frontend", "broker")) is None
    failed = Measurement(
        system="pytriton", model="mlp", concurrency=64, cpu_s_per_1k={"x": 1.0}, error="boom"
    )
    assert total_cpu_ms(failed) is None


def test_cpu_per_call_is_the_median_of_each_rounds_sum() -> None:
    rounds = three_rounds()
    o = cpu_per_call(rounds, "ours", "mlp", 64)
    p = cpu_per_call(rounds, "pytriton", "mlp", 64)
    assert o is not None and p is not None
    assert o.total_ms == pytest.approx(1.0)
    assert o.rounds == 3
    assert list(o.per_process_ms) == ["broker", "frontend", "worker"]
    assert o.per_process_ms["frontend"] == pytest.approx(0.5)
    assert p.total_ms == pytest.approx(1.2)
    assert p.per_process_ms["tritonserver"] == pytest.approx(0.4)
    assert cpu_per_call(rounds, "pytriton", "mlp", 8) is None
    rows = cpu_rows(rounds)
    # Ours carries the paired ratio: per round 1.0/1.2, 1.1/1.0, 0.9/1.5 -> median 0.833.
    assert rows[2].vs_peer == pytest.approx(1.0 / 1.2)
    assert rows[3].vs_peer is None
    assert [(r.system, r.concurrency) for r in rows] == [
        ("ours", 1),
        ("pytriton", 1),
        ("ours", 64),
        ("pytriton", 64),
    ]


def test_goals_pass_on_the_medians_of_paired_rounds() -> None:
    cpu, tput = peer_goals(three_rounds(), [])
    # Per-round CPU ratios 1.0/1.2, 1.1/1.0, 0.9/1.5 -> median 0.833; throughput 1.6, 1.4, 1.7.
    assert cpu.verdict == "PASS"
    assert cpu.value == pytest.approx(1.0 / 1.2)
    assert cpu.at_most and cpu.target == 1.0
    assert tput.verdict == "PASS"
    assert tput.value == pytest.approx(1.6)
    assert tput.detail == "median of 3 paired rounds"


def test_goals_fail_and_say_when_fewer_rounds_than_asked() -> None:
    rnd = Round(
        round=0,
        results=[ours(64, 1300.0, 1.5), pytriton(64, 1000.0, (0.5, 0.4, 0.2, 0.1))],
    )
    cpu, tput = peer_goals([rnd], [])
    assert (cpu.verdict, tput.verdict) == ("FAIL", "FAIL")
    assert cpu.value == pytest.approx(2.0 / 1.2)
    assert tput.value == pytest.approx(1.3)
    assert "median of 1 paired round; the goal asks for 3 (run with --rounds 3)" in tput.detail


def test_goals_not_run_carry_the_reason_pytriton_did_not_run() -> None:
    rnd = Round(
        round=0,
        results=[
            ours(64, 1300.0, 1.5),
            StartFailure(system="pytriton", model="mlp", error="server exited 1\nlog tail"),
        ],
    )
    cpu, tput = peer_goals([rnd], [("install", "-", "pip ok")])
    assert (cpu.verdict, tput.verdict) == (NOT_RUN, NOT_RUN)
    assert cpu.value is None and cpu.detail == "server exited 1"
    _, tput = peer_goals([], [("pytriton", "-", "PyTriton cannot run in this environment: x")])
    assert tput.detail == "PyTriton cannot run in this environment: x"


def test_section_shows_both_systems_the_ratio_and_the_goal_lines() -> None:
    rounds = three_rounds()
    lines = peer_cpu_lines(cpu_rows(rounds), peer_goals(rounds, []))
    text = "\n".join(lines)
    assert (
        "| 64 | 1.000 (broker 0.200 + frontend 0.500 + worker 0.300) | 1.200 (python 0.500 + "
        "python3 0.100 + triton_python_backend_stub 0.200 + tritonserver 0.400) | 0.83x | 3 |"
    ) in text
    assert "| 1 | 2.500 (" in text
    assert (
        "- **PASS** ours total CPU per call at c=64 <= PyTriton's: 0.83x "
        "(target <= 1x; median of 3 paired rounds)"
    ) in lines
    assert (
        "- **PASS** c=64 throughput >= 1.5x PyTriton (median of 3 paired rounds): 1.60x "
        "(target >= 1.5x; median of 3 paired rounds)"
    ) in lines
    assert "did not run" not in text


def test_section_says_clearly_when_pytriton_could_not_run() -> None:
    rnd = Round(round=0, results=[ours(64, 1300.0, 1.5)])
    notes = [("pytriton", "-", "PyTriton cannot run in this environment: no wheel")]
    lines = peer_cpu_lines(cpu_rows([rnd]), peer_goals([rnd], notes))
    assert lines[2] == (
        "**PyTriton did not run, so there is nothing to compare with**: "
        "PyTriton cannot run in this environment: no wheel."
    )
    assert "| 64 | 2.000 (broker 0.200 + frontend 1.500 + worker 0.300) | - | - | 1 |" in lines
    assert (
        "- **NOT RUN** c=64 throughput >= 1.5x PyTriton (median of 3 paired rounds): "
        "PyTriton cannot run in this environment: no wheel"
    ) in lines


def test_the_ratio_is_paired_within_rounds_not_a_ratio_of_medians() -> None:
    # Round 0: ours 1.0 vs 2.0 ms (0.5x); round 1: ours 3.0 vs 1.0 ms (3.0x). Medians of the
    # totals would give 2.0 / 1.5 = 1.33x; the paired median is (0.5 + 3.0) / 2 = 1.75x.
    rounds = [
        Round(round=0, results=[ours(64, 1000.0, 0.5), pytriton(64, 900.0, (1.0, 0.5, 0.3, 0.2))]),
        Round(round=1, results=[ours(64, 1000.0, 2.5), pytriton(64, 900.0, (0.4, 0.3, 0.2, 0.1))]),
    ]
    cpu, _ = peer_goals(rounds, [])
    assert cpu.value == pytest.approx(1.75)
    assert cpu.verdict == "FAIL"
    row = cpu_rows(rounds)[0]
    assert (row.system, row.total_ms) == ("ours", pytest.approx(2.0))
    assert row.vs_peer == pytest.approx(1.75)
