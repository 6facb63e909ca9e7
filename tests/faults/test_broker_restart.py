"""The broker is SIGKILLed under load and restarted on the same ports: no call hangs past its
deadline, every call ends OK or with a status a client may retry (or DEADLINE_EXCEEDED), and the
service comes back by itself (frontend and worker reconnect). Twice: down for a heartbeat TTL
(the frontend and worker notice the silence), and back within a tenth of it (only the new
broker's incarnation tells them that the requests they wait for are gone)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Chaos
from tests.faults.harness import (
    OK,
    ClosedLoop,
    FaultStack,
    between,
    failures,
)

CALL_TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 0.3
LATE_S = 1.0
"""A call may end this much after its deadline (a busy client) before it counts as a hang."""
RECOVERY_S = 5.0
"""Calls succeed again within this long after the new broker listens."""
ALLOWED = (OK, "UNAVAILABLE", "DEADLINE_EXCEEDED")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("down_s", [1.0, 0.1], ids=["down-1s", "down-0.1s"])
def test_broker_sigkill_and_restart_under_load(
    make_stack: Callable[[], FaultStack], chaos: Chaos, down_s: float
) -> None:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["work"])
    old = stack.broker
    load = ClosedLoop(
        stack.frontend.url,
        "work",
        concurrency=16,
        timeout_s=CALL_TIMEOUT_S,
        pause_after_error_s=0.05,  # a polite client: no busy loop while the service is down
    )
    # Callers with short deadlines keep sending while the others wait on the dead broker.
    impatient = ClosedLoop(
        stack.frontend.url,
        "work",
        concurrency=4,
        timeout_s=SHORT_TIMEOUT_S,
        pause_after_error_s=0.05,
        seed=1,
    )
    load.start()
    impatient.start()
    try:
        load.wait_until(lambda calls: len(calls) > 200, timeout_s=30, what="calls flowing")
        killed_at = time.monotonic()
        stack.kill(old)
        time.sleep(down_s)
        restarted_at = stack.restart_broker()
        load.wait_until(
            lambda calls: any(c.status == OK for c in between(calls, restarted_at)),
            timeout_s=RECOVERY_S + 5,
            what="a call succeeding after the broker restarted",
        )
        first_ok = min(c.started_s for c in between(load.calls, restarted_at) if c.status == OK)
        time.sleep(3.0)
    finally:
        patient_calls = load.stop()
        impatient_calls = impatient.stop()
    calls = patient_calls + impatient_calls
    recovered_s = first_ok - restarted_at
    rec = chaos.record(
        f"3 SIGKILL broker, restart on same ports {down_s:g} s later, 16+4 callers",
        calls,
        notes=f"first OK call sent {recovered_s:.1f}s after the new broker listened",
    )

    assert rec.lost == 0, f"{rec.lost} calls hung past deadline + grace"
    slow = [c for c in patient_calls if c.latency_s > CALL_TIMEOUT_S + LATE_S] + [
        c for c in impatient_calls if c.latency_s > SHORT_TIMEOUT_S + LATE_S
    ]
    assert not slow, f"{len(slow)} calls ended long after their deadline"
    assert recovered_s < RECOVERY_S, f"service came back only {recovered_s:.1f}s after restart"
    settled = between(calls, first_ok + 1.0)
    assert settled and all(c.status == OK for c in settled), (
        f"calls still failing after recovery: {failures(settled)}"
    )
    before = [c for c in calls if c.ended_s < killed_at]
    assert before and all(c.status == OK for c in before), failures(before)
    stack.assert_alive()
    bad = [c for c in calls if c.status not in ALLOWED]
    assert not bad, (
        f"{len(bad)} calls ended with a status other than {ALLOWED}, sent between "
        f"{min((c.started_s - killed_at for c in bad), default=0):+.2f}s and "
        f"{max((c.started_s - killed_at for c in bad), default=0):+.2f}s from the kill: "
        f"{failures(bad, ())}"
    )
