"""The broker's byte bound on waiting requests (``--max-queued-bytes``): accounting through every
way a request leaves a queue, the RESOURCE_EXHAUSTED text naming the limit and the sizes, and a
requeue passing the bound."""

from __future__ import annotations

from broker.dispatcher import Dispatcher
from broker.metrics import BrokerMetrics
from broker.queues import ModelQueues, Pending
from fabric import errors
from fabric.protocol import RequestHeader, encode_header
from tests.broker.test_dispatcher import FE, INTERVAL_S, LIVENESS, W1, W2, Harness, sent_ids
from tests.broker.test_metrics import exported, sample

KEY = ("m", "1")


def pending(rid: int, size: int, deadline_ns: int = 0) -> Pending:
    return Pending(FE, rid, KEY, deadline_ns, 0, b"header", b"x" * size)


def test_queued_bytes_follow_push_pop_remove_drain_and_expiry() -> None:
    q = ModelQueues(max_queued=100, max_queued_bytes=1000)
    assert q.push(pending(1, 100)) and q.push(pending(2, 200)) and q.push(pending(3, 300, 5))
    assert q.queued_bytes == 600
    assert q.pop(KEY) is not None and q.queued_bytes == 500
    assert q.remove(KEY, (FE, 2)) is not None and q.queued_bytes == 300
    assert [p.request_id for p in q.expired(now_ns=10)] == [3] and q.queued_bytes == 0
    assert q.push(pending(4, 400)) and q.push(pending(5, 100))
    assert len(list(q.drain(KEY))) == 2 and q.queued_bytes == 0


def test_a_payload_view_counts_its_bytes() -> None:
    q = ModelQueues(max_queued=100, max_queued_bytes=1000)
    item = Pending(FE, 1, KEY, 0, 0, b"header", memoryview(bytearray(700)))
    assert q.push(item)
    assert q.queued_bytes == 700


def test_byte_bound_refuses_with_limit_and_sizes_and_requeue_passes_it() -> None:
    q = ModelQueues(max_queued=100, max_queued_bytes=1000)
    assert q.push(pending(1, 600))
    assert q.full(400) == ""  # exactly the limit fits
    assert not q.push(pending(2, 401))
    assert q.full(401) == (
        "broker queue full: request of 401 bytes with 600 bytes waiting would exceed "
        "--max-queued-bytes (1000 bytes)"
    )
    assert q.queued_bytes == 600 and len(q) == 1
    assert q.push(pending(3, 900), front=True)  # a requeue was admitted once: never dropped
    assert q.queued_bytes == 1500


def test_zero_bytes_means_no_byte_bound_and_the_count_bound_still_holds() -> None:
    q = ModelQueues(max_queued=2)
    assert q.push(pending(1, 1 << 30)) and q.push(pending(2, 1 << 30))
    assert q.full(1) == "broker queue full (2 requests waiting)"
    assert not q.push(pending(3, 1))


def byte_harness(max_queued_bytes: int) -> Harness:
    h = Harness()
    h.d = Dispatcher(
        max_queued=100,
        max_queued_bytes=max_queued_bytes,
        heartbeat_interval_s=INTERVAL_S,
        heartbeat_liveness=LIVENESS,
        clock=h.clocks.mono,
        wall_clock_ns=h.clocks.wall,
    )
    return h


def request(h: Harness, rid: int, size: int) -> int:
    header = RequestHeader(rid, "m", "1", 0, "", 0)
    h.d.on_request(FE, header, encode_header(header), b"x" * size)
    return rid


def test_dispatcher_answers_resource_exhausted_past_the_byte_bound() -> None:
    h = byte_harness(1000)
    h.announce(W1, ("m", "1", 1))
    request(h, 1, 5000)  # sent at once: in flight, not waiting, so not counted
    request(h, 2, 700)
    assert sent_ids(h.sent()) == [(W1, 1)]
    assert h.d.queues.queued_bytes == 700
    header = h.one_error(request(h, 3, 400), errors.RESOURCE_EXHAUSTED)
    assert header.message == (
        "broker queue full: request of 400 bytes with 700 bytes waiting would exceed "
        "--max-queued-bytes (1000 bytes)"
    )
    assert h.d.counters.rejected_full == 1
    # Room again once the waiting request goes to a worker.
    h.reply(W1, 1)
    assert sent_ids(h.sent()) == [(W1, 2)]
    h.answers()
    request(h, 4, 400)
    assert h.answers() == []
    assert h.d.queues.queued_bytes == 400


def test_requests_of_a_lost_worker_are_requeued_past_the_byte_bound() -> None:
    h = byte_harness(1000)
    h.announce(W1, ("m", "1", 2))
    h.announce(W2, ("m", "1", 0))
    request(h, 1, 800)
    request(h, 2, 800)
    assert sent_ids(h.sent()) == [(W1, 1), (W1, 2)]
    h.kill_by_silence(W1)
    assert h.answers() == []  # both wait again, 1600 bytes over a 1000-byte bound
    assert h.d.queues.queued_bytes == 1600


def test_queued_bytes_are_exported_as_a_gauge() -> None:
    h = byte_harness(1000)
    metrics = BrokerMetrics(h.d)
    h.announce(W1, ("m", "1", 1))
    request(h, 1, 300)  # in flight
    request(h, 2, 200)  # waiting
    f = exported(metrics)
    assert f.types["fabric_broker_queued_bytes"] == "gauge"
    assert sample(f, "fabric_broker_queued_bytes") == 200
