"""``bench.broker_bench``'s typed report: Markdown rows, failure status and JSON."""

from __future__ import annotations

import json

from bench.broker_bench import to_markdown
from bench.broker_results import BrokerReport, FrontendMemory, QueuedMemory, Routing, to_json

META = {
    "timestamp": "t",
    "git": "abc",
    "cpus": 2,
    "duration_s": 1.0,
    "warmup_s": 0.5,
    "frontends": 2,
    "window": 128,
    "workers": 2,
    "capacity": 128,
}


def test_rows_for_a_measured_and_a_failed_routing_run() -> None:
    ok = Routing(mode="coalesced", coalesce=True, routed_per_s=5000.0, broker_cpu_util=0.25)
    bad = Routing(mode="one message per request", coalesce=False, error="broker died")
    queued = QueuedMemory(queued_target=10, capacity=4, queue_depth=10.0, rejected=0)
    report = BrokerReport(meta=META, routing=[bad, ok], queued=queued)
    md = to_markdown(report)
    assert "| one message per request | failed: broker died |" in md
    assert "| coalesced | 5,000 | 25% |" in md
    assert "Broker RSS with 10 queued requests" in md
    assert "Frontend" not in md
    assert report.failed()
    report.routing = [ok]
    assert not report.failed()
    report.frontend = FrontendMemory(concurrency=128, error="not ready")
    assert report.failed() and "failed: not ready" in to_markdown(report)


def test_json_leaves_out_what_was_not_measured() -> None:
    data = json.loads(to_json(BrokerReport(meta=META, routing=[Routing(mode="m", coalesce=False)])))
    assert data["routing"] == [{"mode": "m", "coalesce": False}]
    assert "queued" not in data
