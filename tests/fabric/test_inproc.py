"""The worker's in-process sub-protocol (``fabric.inproc``): builders through its reader and
on through the wire reader, groups, signals, malformed input, and the reply buffer."""

from __future__ import annotations

import threading

import pytest

from fabric import inproc
from fabric.messages import Message, iter_messages
from fabric.protocol import (
    AckHeader,
    ControlReplyHeader,
    Frame,
    MalformedMessage,
    MsgType,
    ReplyHeader,
)

FE = b"fe-\x00\x01"


def wire(item: inproc.Outbound | inproc.Signal) -> tuple[int, Message]:
    """Link index and the wire message of an outbound item."""
    assert isinstance(item, tuple)
    index, frames = item
    (msg,) = iter_messages(frames, routed=True)
    assert isinstance(msg, Message)
    return index, msg


def test_route_is_the_link_byte_then_the_frontend() -> None:
    assert inproc.route(3, FE) == b"\x03" + FE
    with pytest.raises(ValueError):
        inproc.route(256, FE)


@pytest.mark.parametrize("body", [b"response", None])
def test_reply_round_trip(body: bytes | None) -> None:
    built = inproc.reply(inproc.route(2, FE), 41, "OK", "", body)
    (item,) = inproc.iter_inproc(built)
    index, msg = wire(item)
    assert index == 2
    assert msg.type is MsgType.REPLY
    assert msg.header == ReplyHeader(41, "OK", "")
    assert msg.route == FE
    assert list(msg.payload) == ([] if body is None else [body])


def test_ack_and_control_reply_round_trip() -> None:
    to = inproc.route(0, FE)
    header = ControlReplyHeader(5, "INTERNAL", "failed", [])
    items = [
        *inproc.iter_inproc(inproc.ack(to, 9)),
        *inproc.iter_inproc(inproc.control_reply(to, header)),
    ]
    (i0, ack), (i1, control) = (wire(item) for item in items)
    assert (i0, ack.type, ack.header, ack.route) == (0, MsgType.ACK, AckHeader(9), FE)
    assert (i1, control.type, control.header, control.route) == (
        0,
        MsgType.CONTROL_REPLY,
        header,
        FE,
    )


def test_group_unpacks_in_order_and_a_lone_message_goes_as_itself() -> None:
    built = [inproc.reply(inproc.route(i % 2, FE), i, "OK", "", b"r%d" % i) for i in range(5)]
    assert inproc.group(built[:1]) == built[0]
    got = [wire(item) for item in inproc.iter_inproc(inproc.group(built))]
    assert [(index, msg.header.request_id) for index, msg in got] == [  # type: ignore[union-attr]
        (i % 2, i) for i in range(5)
    ]


def test_signals() -> None:
    assert list(inproc.iter_inproc(inproc.wake())) == [inproc.Signal.WAKE]
    assert list(inproc.iter_inproc(inproc.announce())) == [inproc.Signal.ANNOUNCE]


def test_reading_never_changes_the_built_message() -> None:
    built = inproc.reply(inproc.route(1, FE), 7, "OK", "", b"body")
    before = list(built)
    index, frames = inproc.outbound(built)
    assert index == 1
    assert frames is not built
    assert built == before


@pytest.mark.parametrize(
    "frames",
    [[b"nonsense"], [b"group"], [b"group", b"\xc1"], [b"\x00", b"tag"], [b""]],
    ids=["unknown kind", "group without body", "bad group body", "too short", "empty kind"],
)
def test_malformed_inproc_messages_raise(frames: list[Frame]) -> None:
    with pytest.raises(MalformedMessage):
        list(inproc.iter_inproc(frames))


def test_reply_buffer_hands_each_thread_its_own_messages_once_in_order() -> None:
    buffer = inproc.ReplyBuffer()
    threads, per_thread = 8, 500
    taken: dict[int, list[list[Frame]]] = {t: [] for t in range(threads)}
    start = threading.Barrier(threads + 1)

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            buffer.add(inproc.ack(inproc.route(0, b"fe-%d" % t), i))
            if i % 7 == 0:
                taken[t].extend(buffer.take())
        taken[t].extend(buffer.take())
        assert len(buffer) == 0

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    for w in workers:
        w.join(10.0)
    assert buffer.take() == []  # this thread added nothing
    for t, items in taken.items():
        seen = [
            (msg.route, msg.header.request_id) for _, msg in map(wire, map(inproc.outbound, items))
        ]  # type: ignore[union-attr]
        assert seen == [(b"fe-%d" % t, i) for i in range(per_thread)]


def test_a_flush_on_another_thread_never_takes_this_threads_messages() -> None:
    """Sent on the other thread's socket, a response could overtake the next one of its
    decoupled request (the I/O loop fair-queues between sockets): issue 16."""
    buffer = inproc.ReplyBuffer()
    to = inproc.route(0, b"fe")
    buffer.add(inproc.reply(to, 7, "OK", "", b"response 1", more=True))
    others: list[list[Frame]] = []
    other = threading.Thread(target=lambda: others.extend(buffer.take()))
    other.start()
    other.join(10.0)
    assert others == []
    buffer.add(inproc.reply(to, 7, "OK", "", b"response 2", more=True))
    assert [m[-1] for m in buffer.take()] == [b"response 1", b"response 2"]
    assert len(buffer) == 0
