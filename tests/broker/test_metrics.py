"""The broker's metrics, driven through the dispatcher with fake clocks: time queued per model
version, counters exported as counters, drops by reason, depth 0 for served versions."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import BrokerMetrics
from fabric import errors
from fabric.protocol import CancelHeader

from .test_dispatcher import FE, W1, Harness


@dataclass
class Scrape:
    types: dict[str, str]  # family name -> prometheus type
    samples: list[tuple[str, dict[str, str], float]]


def exported(metrics: BrokerMetrics) -> Scrape:
    """What a scrape after the next tick reads."""
    metrics.refresh()
    text = generate_latest(metrics.registry).decode()
    out = Scrape({}, [])
    for family in text_string_to_metric_families(text):
        out.types[family.name] = family.type
        out.samples += [(s.name, s.labels, s.value) for s in family.samples]
    return out


def sample(scrape: Scrape, name: str, **labels: str) -> float:
    found = [v for n, have, v in scrape.samples if n == name and have == labels]
    assert len(found) == 1, f"{len(found)} samples {name}{labels}"
    return found[0]


def test_time_queued_is_zero_with_free_credit_and_exact_when_queued() -> None:
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 1))
    first = h.request()  # credit free: dispatched at once
    h.request()  # queued behind it
    assert len(h.sent()) == 1
    h.clocks.advance(0.03)
    h.reply(W1, first)  # frees the credit: the queued one goes after 30 ms
    assert len(h.sent()) == 1
    f = exported(metrics)
    labels = {"model": "m", "version": "1"}
    assert sample(f, "fabric_broker_queue_wait_seconds_count", **labels) == 2
    assert sample(f, "fabric_broker_queue_wait_seconds_bucket", **labels, le="0.0001") == 1
    assert sample(f, "fabric_broker_queue_wait_seconds_bucket", **labels, le="0.02") == 1
    assert sample(f, "fabric_broker_queue_wait_seconds_bucket", **labels, le="0.05") == 2
    assert abs(sample(f, "fabric_broker_queue_wait_seconds_sum", **labels) - 0.03) < 1e-9


def test_cumulative_events_are_counters_and_drops_carry_their_reason() -> None:
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 1))
    busy = h.request()
    cancelled = h.request()
    h.request(deadline_ns=h.clocks.wall_ns + 10_000_000)  # expires in the queue
    h.d.on_cancel(FE, CancelHeader(cancelled))
    h.clocks.advance(0.05)
    h.d.tick()  # the third expires in the queue
    h.reply(W1, busy)
    f = exported(metrics)
    assert f.types["fabric_broker_requests"] == "counter"
    assert sample(f, "fabric_broker_requests_total") == 3
    assert sample(f, "fabric_broker_replies_total") == 1
    assert sample(f, "fabric_broker_dropped_total", reason="cancelled") == 1
    assert sample(f, "fabric_broker_dropped_total", reason="expired") == 1
    assert sample(f, "fabric_broker_answers_total", status=errors.OK) == 1
    assert sample(f, "fabric_broker_answers_total", status=errors.DEADLINE_EXCEEDED) == 1
    assert sample(f, "fabric_broker_requeued_total") == 0
    assert "fabric_broker_events" not in f.types  # the old gauge of cumulative counts is gone


def test_gauges_show_served_versions_with_nothing_queued_and_free_credit() -> None:
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 4), ("n", "2", 2))
    h.request()
    f = exported(metrics)
    assert f.types["fabric_broker_queue_depth"] == "gauge"
    assert sample(f, "fabric_broker_queue_depth", model="m", version="1") == 0
    assert sample(f, "fabric_broker_queue_depth", model="n", version="2") == 0
    assert sample(f, "fabric_broker_credit", model="m") == 3
    assert sample(f, "fabric_broker_in_flight") == 1
    assert sample(f, "fabric_broker_workers") == 1


def test_a_scrape_reads_the_last_snapshot_not_the_live_state() -> None:
    h = Harness()
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 4))
    metrics.refresh()
    h.request()  # after the snapshot: the HTTP thread must not see it until the next tick
    registry = CollectorRegistry()
    registry.register(metrics.collector)
    text = generate_latest(registry).decode()
    assert "fabric_broker_requests_total 0.0" in text
    metrics.refresh()
    assert "fabric_broker_requests_total 1.0" in generate_latest(registry).decode()
