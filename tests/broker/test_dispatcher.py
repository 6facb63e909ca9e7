"""The broker's decisions, driven by method calls with fake clocks: routing, credit, queueing,
deadlines, cancellation, worker loss and requeue, stale replies, catalogs and heartbeats."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest

from broker.dispatcher import Dispatcher
from fabric import errors
from fabric.messages import Message, iter_messages
from fabric.protocol import (
    FLAG_NON_IDEMPOTENT,
    PROTOCOL_TAG,
    TYPE_FRAME,
    AckHeader,
    CancelHeader,
    CatalogEntry,
    CatalogHeader,
    Frame,
    HeartbeatHeader,
    ModelAnnouncement,
    MsgType,
    PeerId,
    ReannounceHeader,
    ReplyHeader,
    RequestHeader,
    decode_header,
    encode_header,
)

WALL0_NS = 1_700_000_000_000_000_000
INTERVAL_S = 1.0
LIVENESS = 3  # a silent worker dies 3 s after it was last seen

FE = b"fe-1"
FE2 = b"fe-2"
W1, W2, W3 = b"w-1", b"w-2", b"w-3"


class Clocks:
    """A monotonic clock and a wall clock that advance together."""

    def __init__(self) -> None:
        self.mono_s = 1000.0
        self.wall_ns = WALL0_NS

    def mono(self) -> float:
        return self.mono_s

    def wall(self) -> int:
        return self.wall_ns

    def advance(self, dt_s: float) -> None:
        self.mono_s += dt_s
        self.wall_ns += int(dt_s * 1e9)


@dataclass
class Sent:
    """A REQUEST the broker sent to a worker."""

    worker: PeerId
    header: RequestHeader
    header_frame: Frame
    frontend: Frame
    payload: Frame


@dataclass
class Answer:
    """A REPLY the broker sent to a frontend."""

    frontend: PeerId
    header: ReplyHeader
    header_frame: Frame
    payload: list[Frame]


class Harness:
    def __init__(self, max_queued: int = 100) -> None:
        self.clocks = Clocks()
        self.d = Dispatcher(
            max_queued=max_queued,
            heartbeat_interval_s=INTERVAL_S,
            heartbeat_liveness=LIVENESS,
            clock=self.clocks.mono,
            wall_clock_ns=self.clocks.wall,
        )
        self._next_id = 0

    # ---- driving ----------------------------------------------------------------------
    def announce(self, worker: PeerId, *models: tuple[str, str, int]) -> None:
        self.d.on_ready(
            worker,
            [
                ModelAnnouncement(name, ver, f"cfg-{name}-{ver}".encode(), cap)
                for name, ver, cap in models
            ],
        )

    def request(
        self,
        model: str = "m",
        version: str = "1",
        *,
        frontend: PeerId = FE,
        deadline_ns: int = 0,
        flags: int = 0,
        rid: int | None = None,
    ) -> int:
        if rid is None:
            self._next_id += 1
            rid = self._next_id
        header = RequestHeader(rid, model, version, deadline_ns, "", flags)
        self.d.on_request(frontend, header, encode_header(header), b"payload-%d" % rid)
        return rid

    def reply(
        self, worker: PeerId, rid: int, *, frontend: PeerId = FE, status: str = errors.OK
    ) -> bytes:
        frame = encode_header(ReplyHeader(rid, status, ""))
        self.d.on_reply(
            worker, ReplyHeader(rid, status, ""), frame, frontend, [b"response-%d" % rid]
        )
        return frame

    def kill_by_silence(self, victim: PeerId) -> None:
        """Let ``victim`` miss its heartbeats while every other worker keeps talking."""
        for _ in range(LIVENESS * 2):
            self.clocks.advance(INTERVAL_S / 2)
            for w in list(self.d.registry.workers):
                if w != victim:
                    assert self.d.on_worker_seen(w)
            self.d.tick()
        assert victim not in self.d.registry.workers

    # ---- outboxes ---------------------------------------------------------------------
    def sent(self) -> list[Sent]:
        """REQUESTs sent to workers since the last call (other worker traffic is dropped)."""
        out = []
        for worker, frames in self.d.to_workers:
            assert frames[0] == PROTOCOL_TAG
            if frames[1] == TYPE_FRAME[MsgType.REQUEST]:
                assert len(frames) == 5
                header = decode_header(MsgType.REQUEST, frames[2])
                assert isinstance(header, RequestHeader)
                out.append(Sent(worker, header, frames[2], frames[3], frames[4]))
        self.d.to_workers.clear()
        return out

    def worker_messages(self, msg_type: MsgType) -> list[tuple[PeerId, list[Frame]]]:
        out = [(w, f) for w, f in self.d.to_workers if f[1] == TYPE_FRAME[msg_type]]
        self.d.to_workers.clear()
        return out

    def answers(self) -> list[Answer]:
        """REPLYs sent to frontends since the last call (catalogs etc. are dropped)."""
        out = []
        for frontend, frames in self.d.to_frontends:
            assert frames[0] == PROTOCOL_TAG
            if frames[1] == TYPE_FRAME[MsgType.REPLY]:
                header = decode_header(MsgType.REPLY, frames[2])
                assert isinstance(header, ReplyHeader)
                out.append(Answer(frontend, header, frames[2], list(frames[3:])))
        self.d.to_frontends.clear()
        return out

    def frontend_messages(self) -> list[tuple[PeerId, MsgType, msgspec.Struct]]:
        out = []
        for frontend, frames in self.d.to_frontends:
            assert frames[0] == PROTOCOL_TAG
            msg_type = MsgType(frames[1][0])
            out.append((frontend, msg_type, decode_header(msg_type, frames[2])))
        self.d.to_frontends.clear()
        return out

    def one_error(self, rid: int, code: str, frontend: PeerId = FE) -> ReplyHeader:
        answers = self.answers()
        assert [(a.frontend, a.header.request_id, a.header.status) for a in answers] == [
            (frontend, rid, code)
        ]
        assert answers[0].payload == []  # errors carry no response
        assert answers[0].header.message
        return answers[0].header


@pytest.fixture
def h() -> Harness:
    return Harness()


def sent_ids(sent: list[Sent]) -> list[tuple[PeerId, int]]:
    return [(s.worker, s.header.request_id) for s in sent]


# ---- admission: routing errors --------------------------------------------------------------


def test_request_without_any_worker_is_unavailable(h: Harness) -> None:
    rid = h.request("m", "")
    assert "no worker" in h.one_error(rid, errors.UNAVAILABLE).message
    assert h.sent() == []


def test_request_naming_a_version_without_any_worker_is_unavailable(h: Harness) -> None:
    rid = h.request("m", "1")
    h.one_error(rid, errors.UNAVAILABLE)


@pytest.mark.parametrize("version", ["", "1"])
def test_unknown_model_with_workers_is_not_found(h: Harness, version: str) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request("other", version)
    h.one_error(rid, errors.NOT_FOUND)
    assert h.sent() == []


def test_unknown_version_is_not_found(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4), ("m", "2", 4))
    rid = h.request("m", "3")
    message = h.one_error(rid, errors.NOT_FOUND).message
    assert message == "Request for unknown model: 'm' version 3 is not found"
    assert h.sent() == []


def test_unloaded_version_is_not_found_with_tritons_texts(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("other", "1", 4))
    h.announce(W1)  # W1 unloaded m: not retryable, unlike a worker that died
    rid = h.request("m", "1")
    reply = h.one_error(rid, errors.NOT_FOUND)
    assert reply.message == "Request for unknown model: 'm' version 1 is not found"
    rid = h.request("m", "")
    reply = h.one_error(rid, errors.NOT_FOUND)
    assert reply.message == "Request for unknown model: 'm' has no available versions"
    h.announce(W1, ("m", "1", 4))  # loaded again: served
    rid = h.request("m", "1")
    assert h.sent()


def test_known_version_whose_worker_died_is_unavailable(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("other", "1", 4))
    h.kill_by_silence(W1)  # the broker still knows m:1 exists; a worker may come back
    rid = h.request("m", "1")
    h.one_error(rid, errors.UNAVAILABLE)
    rid = h.request("m", "")
    h.one_error(rid, errors.UNAVAILABLE)


# ---- dispatch -------------------------------------------------------------------------------


def test_request_is_forwarded_untouched_to_a_serving_worker(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    header = RequestHeader(42, "m", "1", WALL0_NS + 10**9, "00-trace-01", 0)
    frame = encode_header(header)
    payload = memoryview(b"\x01\x02tensor bytes")
    h.d.on_request(FE, header, frame, payload)
    (sent,) = h.sent()
    assert sent.worker == W1
    assert sent.header_frame is frame
    assert sent.header == header
    assert sent.frontend == FE
    assert sent.payload is payload
    assert h.answers() == []
    assert (FE, 42) in h.d.leases


def test_empty_version_routes_to_the_latest_version(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4), ("m", "9", 4))
    h.announce(W2, ("m", "10", 4))  # numerically latest, though "9" > "10" as strings
    rid = h.request("m", "")
    assert sent_ids(h.sent()) == [(W2, rid)]
    assert h.d.leases[(FE, rid)].key == ("m", "10")


def test_empty_version_ignores_versions_no_live_worker_serves(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("m", "2", 4))
    h.d.on_worker_disconnect(W2)
    rid = h.request("m", "")
    assert sent_ids(h.sent()) == [(W1, rid)]
    assert h.d.leases[(FE, rid)].key == ("m", "1")


def test_dispatch_only_to_workers_serving_the_version(h: Harness) -> None:
    h.announce(W1, ("m", "1", 8))
    h.announce(W2, ("m", "2", 8), ("x", "1", 8))
    ids = [h.request("m", "2") for _ in range(5)]
    assert sent_ids(h.sent()) == [(W2, i) for i in ids]
    ids = [h.request("m", "1") for _ in range(5)]
    assert sent_ids(h.sent()) == [(W1, i) for i in ids]


def test_dispatch_stays_within_credit(h: Harness) -> None:
    h.announce(W1, ("m", "1", 2))
    h.announce(W2, ("m", "2", 8))  # idle, but serves another version
    ids = [h.request("m", "1") for _ in range(5)]
    assert sent_ids(h.sent()) == [(W1, ids[0]), (W1, ids[1])]
    assert len(h.d.queues) == 3
    assert h.d.queues.depth(("m", "1")) == 3
    assert h.d.registry.workers[W1].in_flight["m"] == 2
    assert h.answers() == []


def test_credit_is_per_model(h: Harness) -> None:
    h.announce(W1, ("a", "1", 1), ("b", "1", 1))
    ra = h.request("a", "1")
    rb = h.request("b", "1")
    ra2 = h.request("a", "1")
    assert sent_ids(h.sent()) == [(W1, ra), (W1, rb)]
    assert [p.request_id for p in h.d.queues.drain(("a", "1"))] == [ra2]


def test_worker_with_zero_capacity_gets_nothing(h: Harness) -> None:
    h.announce(W1, ("m", "1", 0))
    h.request("m", "1")
    assert h.sent() == []
    assert len(h.d.queues) == 1


def test_least_loaded_worker_is_chosen(h: Harness) -> None:
    h.announce(W1, ("m", "1", 2))
    h.announce(W2, ("m", "1", 8))
    counts = {W1: 0, W2: 0}
    caps = {W1: 2, W2: 8}
    for _ in range(10):
        loads = {w: counts[w] / caps[w] for w in caps if counts[w] < caps[w]}
        h.request("m", "1")
        (sent,) = h.sent()
        assert loads[sent.worker] == min(loads.values())
        counts[sent.worker] += 1
    assert counts == {W1: 2, W2: 8}
    h.request("m", "1")  # both full now
    assert h.sent() == []


def test_least_loaded_prefers_the_idle_worker(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("m", "1", 4))
    first = h.request()
    (s1,) = h.sent()
    h.request()
    (s2,) = h.sent()
    assert s2.worker != s1.worker
    # Free the first worker completely: the next request goes back to it.
    h.reply(s1.worker, first)
    h.request()
    (s3,) = h.sent()
    assert s3.worker == s1.worker


def test_queued_requests_are_dispatched_fifo_as_credit_frees(h: Harness) -> None:
    h.announce(W1, ("m", "1", 2))
    ids = [h.request() for _ in range(6)]
    assert sent_ids(h.sent()) == [(W1, ids[0]), (W1, ids[1])]
    h.reply(W1, ids[1])
    assert sent_ids(h.sent()) == [(W1, ids[2])]
    h.reply(W1, ids[0])
    assert sent_ids(h.sent()) == [(W1, ids[3])]
    # A request arriving now waits behind the queue even though nothing is in front of it yet.
    late = h.request()
    assert h.sent() == []
    h.reply(W1, ids[2])
    h.reply(W1, ids[3])
    assert sent_ids(h.sent()) == [(W1, ids[4]), (W1, ids[5])]
    h.reply(W1, ids[4])
    assert sent_ids(h.sent()) == [(W1, late)]


def test_new_worker_takes_queued_work(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    ids = [h.request() for _ in range(4)]
    assert sent_ids(h.sent()) == [(W1, ids[0])]
    h.announce(W2, ("m", "1", 2))
    assert sent_ids(h.sent()) == [(W2, ids[1]), (W2, ids[2])]
    assert len(h.d.queues) == 1


def test_queue_bound_answers_resource_exhausted() -> None:
    h = Harness(max_queued=2)
    h.announce(W1, ("m", "1", 1))
    ids = [h.request() for _ in range(3)]  # one in flight, two queued
    assert sent_ids(h.sent()) == [(W1, ids[0])]
    full = h.request()
    h.one_error(full, errors.RESOURCE_EXHAUSTED)
    assert h.d.counters.rejected_full == 1
    assert len(h.d.queues) == 2
    # The bound is on waiting requests: once one leaves the queue there is room again.
    h.reply(W1, ids[0])
    h.answers()
    h.request()
    assert h.answers() == []
    assert len(h.d.queues) == 2


def test_model_queue_limit_from_max_queue_size() -> None:
    h = Harness(max_queued=100)
    h.d.on_ready(W1, [ModelAnnouncement("m", "1", b"cfg", 1, max_queued=2)])
    ids = [h.request() for _ in range(3)]  # one in flight, two queued: the model's limit
    assert sent_ids(h.sent()) == [(W1, ids[0])]
    full = h.request()
    h.one_error(full, errors.RESOURCE_EXHAUSTED)
    assert len(h.d.queues) == 2
    # A second worker of the same version without a limit lifts it.
    h.d.on_ready(W2, [ModelAnnouncement("m", "1", b"cfg", 0)])
    assert h.d.registry.queue_limit(("m", "1")) == 0


# ---- deadlines ------------------------------------------------------------------------------


def test_deadline_passed_at_arrival(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request(deadline_ns=WALL0_NS)  # reaching the deadline is passing it
    h.one_error(rid, errors.DEADLINE_EXCEEDED)
    rid = h.request(deadline_ns=WALL0_NS - 1)
    h.one_error(rid, errors.DEADLINE_EXCEEDED)
    assert h.sent() == []
    assert h.d.counters.expired == 2
    ok = h.request(deadline_ns=WALL0_NS + 1)
    assert sent_ids(h.sent()) == [(W1, ok)]


def test_expired_at_arrival_even_without_workers(h: Harness) -> None:
    rid = h.request(deadline_ns=WALL0_NS - 1)
    h.one_error(rid, errors.DEADLINE_EXCEEDED)


def test_deadline_passes_while_queued(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    busy = h.request()
    short = h.request(deadline_ns=WALL0_NS + 500_000_000)
    long = h.request(deadline_ns=WALL0_NS + 5_000_000_000)
    forever = h.request()
    h.sent()
    h.clocks.advance(0.4)
    h.d.on_worker_seen(W1)
    h.d.tick()
    assert h.answers() == []
    h.clocks.advance(0.1)
    h.d.tick()
    h.one_error(short, errors.DEADLINE_EXCEEDED)
    assert len(h.d.queues) == 2
    # The expired request is never dispatched; the next ones are, in order.
    h.reply(W1, busy)
    h.answers()
    assert sent_ids(h.sent()) == [(W1, long)]
    h.reply(W1, long)
    assert sent_ids(h.sent()) == [(W1, forever)]


def test_deadline_passed_in_queue_is_caught_on_dispatch_before_a_tick(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    busy = h.request()
    doomed = h.request(deadline_ns=WALL0_NS + 1_000)
    nxt = h.request()
    h.sent()
    h.clocks.advance(0.001)  # no tick in between
    h.reply(W1, busy)
    answers = h.answers()
    assert [(a.header.request_id, a.header.status) for a in answers] == [
        (busy, errors.OK),
        (doomed, errors.DEADLINE_EXCEEDED),
    ]
    assert sent_ids(h.sent()) == [(W1, nxt)]


def test_leased_requests_are_left_to_the_worker_at_their_deadline(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    rid = h.request(deadline_ns=WALL0_NS + 1_000)
    h.sent()
    h.clocks.advance(0.5)
    h.d.on_worker_seen(W1)
    h.d.tick()
    assert h.answers() == []
    assert (FE, rid) in h.d.leases


# ---- cancellation ---------------------------------------------------------------------------


def test_cancel_of_a_queued_request_removes_it(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    busy = h.request()
    doomed = h.request()
    nxt = h.request()
    h.sent()
    h.d.on_cancel(FE, CancelHeader(doomed))
    assert len(h.d.queues) == 1
    assert h.d.counters.cancelled == 1
    assert h.worker_messages(MsgType.CANCEL) == []
    h.reply(W1, busy)
    assert sent_ids(h.sent()) == [(W1, nxt)]
    h.reply(W1, nxt)
    assert h.sent() == []
    assert [a.header.request_id for a in h.answers()] == [busy, nxt]


def test_cancel_matches_the_frontend_too(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.request(rid=1)
    h.request(rid=2, frontend=FE)
    h.request(rid=2, frontend=FE2)  # same id from another frontend
    h.sent()
    h.d.on_cancel(FE2, CancelHeader(2))
    assert [(p.frontend, p.request_id) for p in h.d.queues.drain(("m", "1"))] == [(FE, 2)]


def test_cancel_of_a_leased_request_is_forwarded_to_its_worker(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.announce(W2, ("m", "1", 1))
    h.request()
    rid = h.request()
    (holder,) = [s.worker for s in h.sent() if s.header.request_id == rid]
    h.d.on_cancel(FE, CancelHeader(rid))
    ((worker, frames),) = h.worker_messages(MsgType.CANCEL)
    assert worker == holder
    assert frames[0] == PROTOCOL_TAG
    assert decode_header(MsgType.CANCEL, frames[2]) == CancelHeader(rid)
    assert list(frames[3:]) == [FE]
    # The lease stays until the worker answers.
    assert (FE, rid) in h.d.leases


def test_cancel_of_an_unknown_request_does_nothing(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.request()
    h.sent()
    h.d.on_cancel(FE, CancelHeader(999))
    assert h.d.to_workers == []
    assert h.d.to_frontends == []
    assert h.d.counters.cancelled == 0


# ---- worker loss and requeue ----------------------------------------------------------------


def test_silent_worker_is_purged_at_expiry(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.clocks.advance(INTERVAL_S * LIVENESS - 0.001)
    h.d.tick()
    assert W1 in h.d.registry.workers
    h.clocks.advance(0.001)
    h.d.tick()
    assert W1 not in h.d.registry.workers


def test_any_traffic_keeps_a_worker_alive(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    for _ in range(10):
        h.clocks.advance(INTERVAL_S * LIVENESS - 0.01)
        assert h.d.on_worker_seen(W1)
        h.d.tick()
    assert W1 in h.d.registry.workers
    # Ticks heartbeat every live worker with the current generation.
    beats = h.worker_messages(MsgType.HEARTBEAT)
    assert len(beats) == 10
    assert all(w == W1 for w, _ in beats)
    assert decode_header(MsgType.HEARTBEAT, beats[-1][1][2]) == HeartbeatHeader(
        h.d.registry.generation, h.d.registry.incarnation
    )


def test_lost_worker_requests_are_requeued_once_to_another_worker(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    (first,) = h.sent()
    assert first.worker == W1
    h.announce(W2, ("m", "1", 4))
    h.kill_by_silence(W1)
    (again,) = h.sent()
    assert again.worker == W2
    assert again.header_frame is first.header_frame
    assert again.payload is first.payload
    assert again.frontend == FE
    assert h.answers() == []
    assert h.d.counters.requeued == 1
    assert h.d.leases[(FE, rid)].worker == W2
    h.reply(W2, rid)
    (answer,) = h.answers()
    assert (answer.header.request_id, answer.header.status) == (rid, errors.OK)


def test_requeued_request_waits_for_credit_ahead_of_the_queue(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.announce(W2, ("m", "1", 1))
    a = h.request()
    b = h.request()
    c = h.request()  # queued
    held = {s.header.request_id: s.worker for s in h.sent()}
    assert set(held) == {a, b}
    victim = held[a]
    survivor = held[b]
    h.d.on_worker_disconnect(victim)
    assert h.sent() == []  # the survivor has no credit
    h.reply(survivor, b)
    assert sent_ids(h.sent()) == [(survivor, a)]  # the requeued one goes before c
    h.reply(survivor, a)
    assert sent_ids(h.sent()) == [(survivor, c)]


def test_requeued_requests_keep_their_order(h: Harness) -> None:
    h.announce(W1, ("m", "1", 3))
    ids = [h.request() for _ in range(3)]
    assert sent_ids(h.sent()) == [(W1, i) for i in ids]
    h.announce(W2, ("m", "1", 1))
    blocker = h.request()
    assert sent_ids(h.sent()) == [(W2, blocker)]
    h.d.on_worker_disconnect(W1)
    assert h.sent() == []
    got = []
    last = blocker
    for _ in ids:
        h.reply(W2, last)
        (s,) = h.sent()
        got.append(s.header.request_id)
        last = s.header.request_id
    assert got == ids


def test_lost_worker_without_another_server_fails_its_requests(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1))
    h.announce(W2, ("other", "1", 4))
    leased = h.request()
    queued = h.request()
    h.sent()
    h.kill_by_silence(W1)
    answers = h.answers()
    assert sorted((a.header.request_id, a.header.status) for a in answers) == [
        (leased, errors.UNAVAILABLE),
        (queued, errors.UNAVAILABLE),
    ]
    assert h.sent() == []
    assert len(h.d.queues) == 0
    assert h.d.leases == {}
    assert h.d.counters.failed_worker_lost == 1


def test_request_requeued_once_fails_when_it_loses_its_worker_again(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    assert sent_ids(h.sent()) == [(W1, rid)]
    h.announce(W2, ("m", "1", 4))
    h.d.on_worker_disconnect(W1)
    assert sent_ids(h.sent()) == [(W2, rid)]
    h.announce(W3, ("m", "1", 4))  # a server is available, but the request had its retry
    h.kill_by_silence(W2)
    assert h.sent() == []
    h.one_error(rid, errors.UNAVAILABLE)
    assert h.d.leases == {}
    # W3 is untouched and serves new work.
    nxt = h.request()
    assert sent_ids(h.sent()) == [(W3, nxt)]


@pytest.mark.parametrize(
    ("flags", "acked", "requeued"),
    [
        (FLAG_NON_IDEMPOTENT, True, False),  # may have run: never twice
        (FLAG_NON_IDEMPOTENT, False, True),  # not started yet: safe to move
        (0, True, True),  # idempotent: always safe
    ],
)
def test_non_idempotent_started_request_is_not_requeued(
    h: Harness, flags: int, acked: bool, requeued: bool
) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("m", "1", 4))
    rid = h.request(flags=flags)
    (s,) = h.sent()
    if acked:
        h.d.on_ack(s.worker, AckHeader(rid), FE)
        assert h.d.leases[(FE, rid)].acked
    other = W2 if s.worker == W1 else W1
    h.d.on_worker_disconnect(s.worker)
    if requeued:
        assert sent_ids(h.sent()) == [(other, rid)]
        assert h.answers() == []
    else:
        assert h.sent() == []
        (answer,) = h.answers()
        assert (answer.frontend, answer.header.request_id) == (FE, rid)
        # The frontend retries what is retryable: a request that may have run must not be.
        assert answer.header.status != errors.OK
        assert answer.header.status not in errors.RETRYABLE
        assert answer.header.status in errors.STATUS_CODES
        assert h.d.leases == {}
        assert len(h.d.queues) == 0


def test_ack_from_a_worker_without_the_lease_is_ignored(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("other", "1", 4))
    rid = h.request(flags=FLAG_NON_IDEMPOTENT)
    h.d.on_ack(W2, AckHeader(rid), FE)
    h.d.on_ack(W1, AckHeader(rid), FE2)
    assert not h.d.leases[(FE, rid)].acked


def test_reply_from_a_worker_that_lost_the_lease_is_dropped(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    assert sent_ids(h.sent()) == [(W1, rid)]
    h.announce(W2, ("m", "1", 4))
    h.kill_by_silence(W1)
    assert sent_ids(h.sent()) == [(W2, rid)]
    # W1 was only slow; its late reply must not answer or release W2's lease.
    h.reply(W1, rid)
    assert h.answers() == []
    assert h.d.leases[(FE, rid)].worker == W2
    assert h.d.registry.workers[W2].in_flight["m"] == 1
    assert h.d.counters.dropped_replies == 1
    h.reply(W2, rid)
    (answer,) = h.answers()
    assert answer.header.request_id == rid
    assert h.d.registry.workers[W2].in_flight["m"] == 0


def test_reply_for_an_unknown_request_is_dropped(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    h.sent()
    h.reply(W1, rid + 1)
    h.reply(W1, rid, frontend=FE2)  # right id, wrong frontend
    assert h.answers() == []
    assert h.d.counters.dropped_replies == 2
    assert h.d.registry.workers[W1].in_flight["m"] == 1


def test_duplicate_reply_is_dropped(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    h.sent()
    h.reply(W1, rid)
    h.reply(W1, rid)
    assert len(h.answers()) == 1
    assert h.d.registry.workers[W1].in_flight["m"] == 0


def test_queued_requests_fail_when_no_worker_serves_the_model_any_more(h: Harness) -> None:
    h.announce(W1, ("m", "1", 1), ("x", "1", 1))
    busy = h.request()
    waiting = h.request()  # no deadline: must not wait forever
    other = h.request("x", "1")
    h.sent()
    h.announce(W1, ("x", "1", 1))  # stops serving m (unload), stays connected
    h.one_error(waiting, errors.UNAVAILABLE)
    assert len(h.d.queues) == 0
    # What it had started it still finishes.
    h.reply(W1, busy)
    h.reply(W1, other, status=errors.OK)
    assert [(a.header.request_id, a.header.status) for a in h.answers()] == [
        (busy, errors.OK),
        (other, errors.OK),
    ]
    assert h.sent() == []


# ---- replies --------------------------------------------------------------------------------


def test_reply_goes_to_the_right_frontend_untouched(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.request(rid=7, frontend=FE)
    h.request(rid=7, frontend=FE2)
    h.sent()
    header = ReplyHeader(7, errors.INVALID_ARGUMENT, "bad input")
    frame = encode_header(header)
    payload = [memoryview(b"resp-bytes")]
    h.d.on_reply(W1, header, frame, FE2, payload)
    (sent,) = h.d.to_frontends
    assert sent[0] == FE2
    assert sent[1][0] == PROTOCOL_TAG
    assert sent[1][1] == TYPE_FRAME[MsgType.REPLY]
    assert sent[1][2] is frame
    assert sent[1][3] is payload[0]
    assert len(sent[1]) == 4
    assert (FE, 7) in h.d.leases
    assert (FE2, 7) not in h.d.leases
    assert h.d.counters.by_status[errors.INVALID_ARGUMENT] == 1


# ---- frontends and workers saying hello -----------------------------------------------------


def test_frontend_with_a_stale_generation_gets_the_catalog(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4), ("m", "2", 4))
    h.announce(W2, ("m", "2", 4), ("x", "7", 1))
    h.announce(W3, ("gone", "1", 1))
    h.d.on_worker_disconnect(W3)
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(h.d.registry.generation - 1))
    ((fe, msg_type, catalog),) = h.frontend_messages()
    assert (fe, msg_type) == (FE, MsgType.CATALOG)
    assert isinstance(catalog, CatalogHeader)
    assert catalog.generation == h.d.registry.generation
    assert catalog.workers == 2
    # A version whose last worker left is gone from the catalog, config and all.
    assert catalog.models == [
        CatalogEntry("m", "1", b"cfg-m-1", 1),
        CatalogEntry("m", "2", b"cfg-m-2", 2),
        CatalogEntry("x", "7", b"cfg-x-7", 1),
    ]


def test_frontend_with_the_current_generation_gets_a_heartbeat(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.d.on_frontend_heartbeat(
        FE, HeartbeatHeader(h.d.registry.generation, h.d.registry.incarnation)
    )
    assert h.frontend_messages() == [
        (FE, MsgType.HEARTBEAT, HeartbeatHeader(h.d.registry.generation, h.d.registry.incarnation))
    ]


def test_catalog_changes_are_broadcast_to_known_frontends(h: Harness) -> None:
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(0))
    h.d.on_frontend_heartbeat(FE2, HeartbeatHeader(0))
    h.frontend_messages()
    before = h.d.registry.generation
    h.clocks.advance(INTERVAL_S)  # catalogs go out at most once per interval (see below)
    h.announce(W1, ("m", "1", 4))
    msgs = h.frontend_messages()
    assert sorted(fe for fe, _, _ in msgs) == [FE, FE2]
    assert all(t is MsgType.CATALOG for _, t, _ in msgs)
    assert all(c.generation > before for _, _, c in msgs)  # type: ignore[attr-defined]
    # A frontend that said goodbye hears no more.
    h.d.on_frontend_disconnect(FE2)
    h.clocks.advance(INTERVAL_S)
    h.d.on_worker_disconnect(W1)
    assert [fe for fe, _, _ in h.frontend_messages()] == [FE]


def test_unknown_worker_is_told_to_announce_again(h: Harness) -> None:
    assert not h.d.on_worker_seen(W1)
    ((worker, frames),) = h.d.to_workers
    assert worker == W1
    (msg,) = iter_messages(frames, routed=True)
    assert isinstance(msg, Message)
    assert msg.type is MsgType.REANNOUNCE
    assert isinstance(msg.header, ReannounceHeader)
    assert W1 not in h.d.registry.workers


def test_known_worker_is_not_told_to_announce_again(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.d.to_workers.clear()
    assert h.d.on_worker_seen(W1)
    assert h.d.to_workers == []


def test_purged_worker_must_announce_again(h: Harness) -> None:
    h.announce(W1, ("m", "1", 4))
    h.kill_by_silence(W1)
    h.d.to_workers.clear()
    assert not h.d.on_worker_seen(W1)
    assert [f[1] for _, f in h.d.to_workers] == [TYPE_FRAME[MsgType.REANNOUNCE]]
    h.d.to_workers.clear()
    h.announce(W1, ("m", "1", 4))
    assert h.d.on_worker_seen(W1)
    rid = h.request()
    assert sent_ids(h.sent()) == [(W1, rid)]


def test_unreachable_worker_is_dropped_and_its_work_goes_to_a_live_one() -> None:
    h = Harness()
    h.announce(W1, ("m", "1", 4))
    rid = h.request()
    [(worker, _)] = [(w, f) for w, f in h.d.to_workers if f[1] == TYPE_FRAME[MsgType.REQUEST]]
    messages = [f[1:] for w, f in h.d.to_workers if w == worker]
    h.sent()
    h.announce(W2, ("m", "1", 4))
    h.d.to_workers.clear()
    # The socket said W1 is gone (EHOSTUNREACH) before its heartbeats were missed.
    h.d.undeliverable(worker, messages, gone=True)
    assert worker not in h.d.registry.workers
    assert sent_ids(h.sent()) == [(W2, rid)]
    assert h.answers() == []
