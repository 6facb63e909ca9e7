"""Hedging hides a stalling worker: two workers serve the same models, one of which stalls
``STALL_S`` about every ``STALL_EVERY_S``. ``unhedged`` (the control group) shows what the
stalls cost; ``hedged`` (``hedge_after_ms: "50"``) must keep its p99 well below the stall, with
every answer correct."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import Chaos
from tests.faults.harness import OK, Call, ClosedLoop, FaultStack, failures, percentile
from tests.faults.models import HEDGE_AFTER_MS, build_hedge_repo

STALL_S = 0.3
STALL_EVERY_S = 0.2
COMPUTE_S = 0.010
CALLERS = 4
PHASE_S = 4.0
CALL_TIMEOUT_S = 5.0


def p99_ms(calls: list[Call]) -> float:
    return percentile([c.latency_s for c in calls], 99) * 1000


def run_phase(stack: FaultStack, model: str) -> list[Call]:
    pids = {w.pid for w in stack.workers}
    warm = ClosedLoop(stack.frontend.url, model, concurrency=CALLERS, timeout_s=CALL_TIMEOUT_S)
    warm.start()
    try:
        warm.wait_until(
            lambda calls: pids <= {c.pid for c in calls if c.status == OK},
            timeout_s=30,
            what=f"both workers answering {model}",
        )
    finally:
        warm.stop()
    load = ClosedLoop(stack.frontend.url, model, concurrency=CALLERS, timeout_s=CALL_TIMEOUT_S)
    load.start()
    try:
        time.sleep(PHASE_S)
    finally:
        calls = load.stop()
    return calls


@pytest.mark.timeout(90)
def test_hedging_hides_a_stalling_worker(
    make_stack: Callable[[], FaultStack], chaos: Chaos, tmp_path: Path
) -> None:
    stalling = build_hedge_repo(tmp_path / "stalling", STALL_S, STALL_EVERY_S, COMPUTE_S)
    steady = build_hedge_repo(tmp_path / "steady", 0.0, 0.0, COMPUTE_S)
    stack = make_stack()
    stack.start_broker()
    stack.start_worker(stalling)
    stack.start_worker(steady)
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["hedged", "unhedged"])

    control = run_phase(stack, "unhedged")
    hedged = run_phase(stack, "hedged")
    slow_ms = STALL_S * 1000 * 0.8
    chaos.record(
        f"9a no hedging, 1 of 2 workers stalls {STALL_S * 1000:.0f} ms (control)",
        control,
        notes=f"p99 {p99_ms(control):.0f} ms; {sum(c.latency_s * 1000 > slow_ms for c in control)}"
        f" calls over {slow_ms:.0f} ms",
    )
    rec = chaos.record(
        f"9 hedge_after_ms {HEDGE_AFTER_MS}, 1 of 2 workers stalls {STALL_S * 1000:.0f} ms",
        hedged,
        notes=f"p99 {p99_ms(hedged):.0f} ms; {sum(c.latency_s * 1000 > slow_ms for c in hedged)}"
        f" calls over {slow_ms:.0f} ms",
    )

    for calls in (control, hedged):
        assert all(c.status == OK for c in calls), failures(calls)
    assert p99_ms(control) > slow_ms, (
        f"control p99 {p99_ms(control):.0f} ms: the stalls do not show, the test proves nothing"
    )
    assert p99_ms(hedged) < STALL_S * 1000 / 2, (
        f"hedged p99 {p99_ms(hedged):.0f} ms is not well below the {STALL_S * 1000:.0f} ms stall"
    )
    assert rec.calls > 200
    stack.assert_alive()
