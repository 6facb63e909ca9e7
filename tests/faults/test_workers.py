"""Worker faults under load: SIGKILL (the worker is gone) and SIGSTOP/SIGCONT (it hangs, then
comes back). Two workers serve ``work`` (~3 ms per batch); the loss of one must cost no call."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Chaos
from tests.faults.harness import (
    OK,
    Call,
    ClosedLoop,
    FaultStack,
    between,
    failures,
)
from tests.integration.stack import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

DETECT_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
"""The broker declares a silent worker dead after this long."""
CALL_TIMEOUT_S = 10.0


def two_worker_stack(make_stack: Callable[[], FaultStack]) -> FaultStack:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["work"])
    return stack


def serving_pids(calls: list[Call]) -> set[int]:
    return {c.pid for c in calls if c.status == OK}


def run_until(
    load: ClosedLoop, since_s: float, n: int, what: str, *, margin_s: float = 0.0
) -> None:
    """Keep the load going until ``n`` calls sent at or after ``since_s`` (monotonic), and
    ``margin_s`` or more before now, have ended."""
    load.wait_until(
        lambda calls: len(between(calls, since_s, time.monotonic() - margin_s)) >= n,
        timeout_s=30.0,
        what=f"{n} calls answered {what}",
    )


def wait_both_serve(load: ClosedLoop, stack: FaultStack) -> None:
    pids = {w.pid for w in stack.workers}
    load.wait_until(
        lambda calls: pids <= serving_pids(calls),
        timeout_s=30,
        what=f"both workers {sorted(pids)} answering",
    )


@pytest.mark.timeout(90)
def test_sigkill_one_of_two_workers_under_load(
    make_stack: Callable[[], FaultStack], chaos: Chaos
) -> None:
    stack = two_worker_stack(make_stack)
    survivor, victim = stack.workers
    load = ClosedLoop(stack.frontend.url, "work", concurrency=32, timeout_s=CALL_TIMEOUT_S)
    load.start()
    try:
        wait_both_serve(load, stack)
        run_until(load, time.monotonic(), 200, "with both workers up")
        killed_at = time.monotonic()
        stack.kill(victim)
        run_until(load, killed_at + DETECT_S + 1.0, 300, "after the kill was detected")
    finally:
        calls = load.stop()
    rec = chaos.record("1 SIGKILL 1 of 2 workers, 32 callers", calls)

    assert rec.lost == 0 and rec.failed == 0, (
        f"{rec.failed} failed, {rec.lost} lost of {rec.calls}: {failures(calls)}"
    )
    after = between(calls, killed_at + DETECT_S + 1.0)
    assert len(after) > 100, f"only {len(after)} calls after the kill: service did not go on"
    assert serving_pids(after) == {survivor.pid}, "calls answered by a dead worker"
    assert survivor.alive() and stack.broker.alive() and stack.frontend.alive()


@pytest.mark.timeout(90)
def test_sigstop_worker_then_sigcont_rejoins(
    make_stack: Callable[[], FaultStack], chaos: Chaos
) -> None:
    stack = two_worker_stack(make_stack)
    survivor, victim = stack.workers
    load = ClosedLoop(stack.frontend.url, "work", concurrency=16, timeout_s=CALL_TIMEOUT_S)
    load.start()
    try:
        wait_both_serve(load, stack)
        run_until(load, time.monotonic(), 100, "with both workers up")
        stopped_at = time.monotonic()
        stack.suspend(victim)
        # The checks below count calls sent up to 0.3 s before SIGCONT: keep a margin of 0.5 s.
        run_until(load, stopped_at + DETECT_S + 0.5, 150, "while a worker hangs", margin_s=0.5)
        resumed_at = time.monotonic()
        stack.resume(victim)
        # It rejoins: answers from the resumed worker again, within a few seconds.
        load.wait_until(
            lambda calls: victim.pid in serving_pids(between(calls, resumed_at)),
            timeout_s=8.0,
            what=f"the resumed worker (pid {victim.pid}) answering again",
        )
        rejoined_after_s = time.monotonic() - resumed_at
        run_until(load, resumed_at + rejoined_after_s, 150, "after the worker rejoined")
    finally:
        calls = load.stop()
    rec = chaos.record(
        "2 SIGSTOP 1 of 2 workers, SIGCONT later, 16 callers",
        calls,
        notes=f"rejoined {rejoined_after_s:.1f}s after SIGCONT",
    )

    assert rec.lost == 0 and rec.failed == 0, (
        f"{rec.failed} failed, {rec.lost} lost of {rec.calls}: {failures(calls)}"
    )
    # Calls sent just before SIGCONT may reach the broker after the worker rejoined.
    while_stopped = between(calls, stopped_at + DETECT_S + 0.5, resumed_at - 0.3)
    assert len(while_stopped) > 50, f"only {len(while_stopped)} calls while a worker hung"
    assert serving_pids(while_stopped) == {survivor.pid}, "a stopped worker answered"
    late = between(calls, resumed_at + rejoined_after_s)
    share = sum(c.pid == victim.pid for c in late) / max(1, len(late))
    assert share > 0.2, f"the resumed worker took only {share:.0%} of the calls after rejoining"
    stack.assert_alive()


@pytest.mark.timeout(90)
def test_calls_right_after_an_idle_worker_dies(
    make_stack: Callable[[], FaultStack], chaos: Chaos
) -> None:
    """SIGKILL a worker that holds no request, then call at once: until its heartbeats are
    missed the broker still counts the dead worker's credit, and a request it sends there must
    go to the other worker instead of failing. The broker breaks ties between equally loaded
    workers in the order they joined, so the first one to join is killed: every call of the
    first second is offered to the dead worker first. (Once a bug: the broker sent it to the
    dead worker again after EHOSTUNREACH, and the call failed UNAVAILABLE.)"""
    stack = make_stack()
    stack.start_broker()
    first = stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["work"])
    stack.start_worker()  # joins second
    warm = ClosedLoop(stack.frontend.url, "work", concurrency=4, timeout_s=CALL_TIMEOUT_S)
    warm.start()
    try:
        wait_both_serve(warm, stack)
    finally:
        warm.stop()  # every call ended: no worker holds a request
    killed_at = time.monotonic()
    stack.kill(first)
    load = ClosedLoop(stack.frontend.url, "work", concurrency=4, timeout_s=CALL_TIMEOUT_S)
    load.start()
    try:
        # Through the detection window: until calls sent after it are answered too.
        run_until(load, killed_at + DETECT_S + 1.0, 20, "after the kill was detected")
    finally:
        calls = load.stop()
    rec = chaos.record("1b SIGKILL an idle worker, then 4 callers at once", calls)

    failed_at = [c.started_s - killed_at for c in calls if c.status != OK]
    assert rec.lost == 0 and rec.failed == 0, (
        f"{rec.failed} failed, {rec.lost} lost of {rec.calls}, the first sent "
        f"{min(failed_at, default=0):.2f}s after the kill: {failures(calls)}"
    )
    stack.assert_alive(killed=[first])
