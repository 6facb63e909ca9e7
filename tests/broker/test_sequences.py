"""Sequence pins in the broker, driven through the dispatcher with fake clocks: a sequence stays
on the worker its START went to, whatever the load; END and idle time release it; a lost worker
fails its sequences (never moves them); decoupled replies with ``more`` keep the lease."""

from __future__ import annotations

from fabric import errors, messages
from fabric.protocol import (
    SEQUENCE_END,
    SEQUENCE_START,
    SEQUENCE_STRING_ID,
    CreditHeader,
    MsgType,
    ReplyHeader,
    RequestHeader,
    encode_header,
)

from .test_dispatcher import FE, W1, W2, Harness


def seq_request(
    h: Harness, sequence: str, flags: int = 0, model: str = "m", version: str = "1"
) -> int:
    h._next_id += 1
    rid = h._next_id
    header = RequestHeader(rid, model, version, 0, "", 0, 0, sequence, flags)
    h.d.on_request(FE, header, encode_header(header), b"payload-%d" % rid)
    return rid


def two_workers() -> Harness:
    h = Harness()
    h.announce(W1, ("m", "1", 4))
    h.announce(W2, ("m", "1", 4))
    return h


def test_every_request_of_a_sequence_goes_to_its_starts_worker() -> None:
    h = two_workers()
    seq_request(h, "1000", SEQUENCE_START)
    seq_request(h, "2000", SEQUENCE_START)
    (first, second) = h.sent()
    assert first.worker != second.worker  # least loaded: they spread
    for _ in range(5):
        seq_request(h, "1000")
        seq_request(h, "2000")
    sent = h.sent()
    assert {s.worker for s in sent if s.header.sequence == "1000"} == {first.worker}
    assert {s.worker for s in sent if s.header.sequence == "2000"} == {second.worker}
    # the header travels untouched: the worker sees the sequence and its flags
    assert all(s.header.sequence_flags == 0 for s in sent)


def test_starts_spread_by_live_sequences_not_momentary_load() -> None:
    h = two_workers()
    workers = []
    for sequence in ("1", "2", "3", "4"):
        seq_request(h, sequence, SEQUENCE_START)
        (sent,) = h.sent()
        h.reply(sent.worker, sent.header.request_id)  # idle again: load says nothing
        workers.append(sent.worker)
    assert workers[0] != workers[1] and workers[2:] == workers[:2]  # alternating
    seq_request(h, "1", SEQUENCE_END)
    seq_request(h, "3", SEQUENCE_END)  # the first worker holds none now, the other two
    h.sent()
    seq_request(h, "5", SEQUENCE_START)
    (sent,) = h.sent()
    assert sent.worker == workers[0]


def test_a_pinned_sequence_ignores_credit_and_keeps_order() -> None:
    h = Harness()
    h.announce(W1, ("m", "1", 1))
    h.announce(W2, ("m", "1", 1))
    seq_request(h, "7", SEQUENCE_START)
    (start,) = h.sent()
    ids = [seq_request(h, "7") for _ in range(3)]  # its worker has no credit left
    sent = h.sent()
    assert [s.header.request_id for s in sent] == ids
    assert {s.worker for s in sent} == {start.worker}
    assert h.answers() == []


def test_a_request_without_a_live_sequence_gets_tritons_text() -> None:
    h = two_workers()
    rid = seq_request(h, "42")
    header = h.one_error(rid, errors.INVALID_ARGUMENT)
    assert header.message == (
        "inference request for sequence 42 to model 'm' must specify the START flag on the "
        "first request of the sequence"
    )
    assert h.sent() == []


def test_end_releases_the_pin() -> None:
    h = two_workers()
    seq_request(h, "9", SEQUENCE_START)
    seq_request(h, "9", SEQUENCE_END)
    assert len(h.sent()) == 2
    assert len(h.d.sequences) == 0
    rid = seq_request(h, "9")
    h.one_error(rid, errors.INVALID_ARGUMENT)


def test_string_and_integer_ids_are_different_sequences() -> None:
    h = two_workers()
    seq_request(h, "5", SEQUENCE_START | SEQUENCE_STRING_ID)
    rid = seq_request(h, "5")  # the uint64 5 never started
    h.one_error(rid, errors.INVALID_ARGUMENT)
    seq_request(h, "5", SEQUENCE_STRING_ID)
    assert len(h.sent()) == 2


def test_an_idle_pin_is_dropped() -> None:
    h = two_workers()
    h.d.sequences.idle_s = 10.0
    seq_request(h, "1", SEQUENCE_START)
    seq_request(h, "2", SEQUENCE_START)
    h.clocks.advance(6.0)
    for w in (W1, W2):
        h.d.on_worker_seen(w)
    seq_request(h, "2")  # used again: stays
    h.clocks.advance(6.0)
    for w in (W1, W2):
        h.d.on_worker_seen(w)
    h.d.tick()
    assert h.d.sequences.worker_of(("m", "1", "1", False)) is None
    assert h.d.sequences.worker_of(("m", "1", "2", False)) is not None


def test_a_lost_worker_fails_its_sequences_and_never_moves_them() -> None:
    h = two_workers()
    seq_request(h, "1", SEQUENCE_START)
    seq_request(h, "2", SEQUENCE_START)
    sent = h.sent()
    victim = sent[0].worker
    survivor = sent[1].worker
    for s in sent:
        h.reply(s.worker, s.header.request_id)
    in_flight = seq_request(h, "1")  # leased to the victim, not answered
    h.sent()
    h.answers()
    h.kill_by_silence(victim)
    # the request it held fails ABORTED (not retryable), it is not requeued elsewhere
    h.one_error(in_flight, errors.ABORTED)
    assert h.sent() == []
    later = seq_request(h, "1")
    header = h.one_error(later, errors.ABORTED)
    assert "start it again" in header.message
    seq_request(h, "2")  # the other sequence goes on
    assert [s.worker for s in h.sent()] == [survivor]
    seq_request(h, "1", SEQUENCE_START)  # restarting it is allowed
    assert [s.worker for s in h.sent()] == [survivor]


def test_a_sequence_for_an_unknown_model_is_not_found() -> None:
    h = two_workers()
    rid = seq_request(h, "1", SEQUENCE_START, model="nope")
    h.one_error(rid, errors.NOT_FOUND)


def test_replies_with_more_keep_the_lease_until_the_last() -> None:
    h = two_workers()
    rid = h.request()
    (sent,) = h.sent()
    for i in range(3):
        part = ReplyHeader(rid, errors.OK, "", True)
        h.d.on_reply(sent.worker, part, encode_header(part), FE, [b"part-%d" % i])
    answers = h.answers()
    assert [a.payload for a in answers] == [[b"part-0"], [b"part-1"], [b"part-2"]]
    assert all(a.header.more for a in answers)
    assert (FE, rid) in h.d.leases
    h.d.on_credit(FE, CreditHeader(rid, 2))
    ((to, frames),) = h.worker_messages(MsgType.CREDIT)
    assert to == sent.worker
    (msg,) = messages.iter_messages(frames, routed=True)
    assert isinstance(msg, messages.Message)
    assert msg.header == CreditHeader(rid, 2)
    assert msg.route == FE
    h.reply(sent.worker, rid)
    assert [a.header.more for a in h.answers()] == [False]
    assert (FE, rid) not in h.d.leases


def test_a_streaming_decoupled_request_is_never_requeued() -> None:
    h = two_workers()
    rid = h.request()
    (sent,) = h.sent()
    part = ReplyHeader(rid, errors.OK, "", True)
    h.d.on_reply(sent.worker, part, encode_header(part), FE, [b"part-0"])
    h.answers()
    h.kill_by_silence(sent.worker)
    header = h.one_error(rid, errors.ABORTED)  # not sent again from its first response
    assert "streaming" in header.message
    assert h.sent() == []
