"""10x overload: the excess is refused at once with RESOURCE_EXHAUSTED, the calls that are
admitted meet their deadline, and the frontend and broker stay within a fixed memory bound.

``busy`` takes 20 ms per batch of up to 8 rows (~400 calls/s); the worker holds 16 of its
requests, the broker queues at most ``MAX_QUEUED`` more and the frontend admits
``MAX_IN_FLIGHT`` at once, so both admission limits refuse calls. Ten times ``MAX_IN_FLIGHT``
callers send without pause (20 ms after a refusal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Chaos
from tests.faults.harness import (
    OK,
    ClosedLoop,
    FaultStack,
    failures,
    percentile,
    vm_rss_bytes,
)

MAX_QUEUED = 8
MAX_IN_FLIGHT = 32
CALLERS = 10 * MAX_IN_FLIGHT
CALL_TIMEOUT_S = 3.0
DURATION_S = 6.0
FRONTEND_RSS_LIMIT = 300 * 2**20
BROKER_RSS_LIMIT = 150 * 2**20
MB = 2**20


class RssSampler:
    """Largest VmRSS seen per pid, sampled every ``interval_s`` in a thread."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.1) -> None:
        self.pids = pids
        self.peak = {name: vm_rss_bytes(pid) for name, pid in pids.items()}
        self.start = dict(self.peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._interval_s = interval_s

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for name, pid in self.pids.items():
                try:
                    self.peak[name] = max(self.peak[name], vm_rss_bytes(pid))
                except (OSError, AssertionError):
                    pass


@pytest.mark.timeout(90)
def test_ten_times_overload(make_stack: Callable[[], FaultStack], chaos: Chaos) -> None:
    stack = make_stack()
    stack.start_broker(["--max-queued", str(MAX_QUEUED)])
    stack.start_worker()
    stack.start_frontend(extra_args=["--max-in-flight", str(MAX_IN_FLIGHT)])
    stack.wait_live()
    stack.wait_ready(["busy"])
    sampler = RssSampler({"frontend": stack.frontend.pid, "broker": stack.broker.pid})
    load = ClosedLoop(
        stack.frontend.url,
        "busy",
        concurrency=CALLERS,
        timeout_s=CALL_TIMEOUT_S,
        pause_after_error_s=0.02,
    )
    with sampler:
        load.start()
        try:
            time.sleep(DURATION_S)
        finally:
            calls = load.stop()
    peak = sampler.peak
    rejected = [c for c in calls if c.status == "RESOURCE_EXHAUSTED"]
    ok = [c for c in calls if c.status == OK]
    rec = chaos.record(
        f"6 overload: {CALLERS} callers, --max-in-flight {MAX_IN_FLIGHT}, "
        f"--max-queued {MAX_QUEUED}",
        calls,
        notes=(
            f"peak RSS frontend {peak['frontend'] / MB:.0f} MB, broker {peak['broker'] / MB:.0f}"
            f" MB; p99 OK {percentile([c.latency_s for c in ok], 99) * 1000:.0f} ms, p99 refusal "
            f"{percentile([c.latency_s for c in rejected], 99) * 1000:.0f} ms"
        ),
    )

    assert rec.lost == 0, f"{rec.lost} calls lost"
    bad = failures(calls, (OK, "RESOURCE_EXHAUSTED"))
    assert not bad, f"admitted calls did not all succeed within their deadline: {bad}"
    assert len(ok) > 100, f"only {len(ok)} calls admitted and served under overload"
    assert len(rejected) > len(ok), "10x overload but most calls admitted"
    sources = {
        "frontend": sum("frontend at capacity" in c.message for c in rejected),
        "broker": sum("broker queue full" in c.message for c in rejected),
    }
    assert all(sources.values()), f"refusals by source: {sources}"
    slowest_refusal = max(c.latency_s for c in rejected)
    assert slowest_refusal < CALL_TIMEOUT_S, f"a refusal waited {slowest_refusal:.2f}s"
    assert peak["frontend"] < FRONTEND_RSS_LIMIT, f"frontend RSS {peak['frontend'] / MB:.0f} MB"
    assert peak["broker"] < BROKER_RSS_LIMIT, f"broker RSS {peak['broker'] / MB:.0f} MB"
    stack.assert_alive()
