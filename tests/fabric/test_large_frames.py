"""Large payloads cross every hop without being copied: ``outgoing`` sends them alone under
``LARGE_TAG``, ``recv_frames`` hands them over as views of ZeroMQ's own buffer, and a
forwarding hop sends that very memory on."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from fabric import inproc, messages
from fabric.protocol import (
    LARGE_PAYLOAD_BYTES,
    LARGE_TAG,
    PROTOCOL_TAG,
    ReplyHeader,
    RequestHeader,
)
from fabric.sockets import make_socket, recv_frames, send_frames

BIG = LARGE_PAYLOAD_BYTES


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = make_socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = make_socket(ctx, zmq.DEALER, identity=b"d1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    assert dealer.poll(5000, zmq.POLLOUT)
    yield router, dealer
    ctx.destroy(linger=0)


def _request(request_id: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    return messages.request(RequestHeader(request_id, "m", "", 0), payload)


def test_small_messages_are_coalesced_and_large_ones_go_alone_in_order() -> None:
    big = b"x" * BIG
    batch = [_request(1, b"a"), _request(2, b"b"), _request(3, big), _request(4, b"c")]
    out = messages.outgoing(batch)
    assert [len(o.messages) for o in out] == [2, 1, 1]
    assert [o.copy for o in out] == [True, False, True]
    assert out[0].frames[1] == bytes([11])  # BATCH
    assert out[1].frames[0] == LARGE_TAG and out[1].frames[-1] is big  # the same object
    assert out[2].frames[0] == PROTOCOL_TAG
    lone = messages.outgoing([_request(5, b"small")])
    assert len(lone) == 1 and lone[0].copy and lone[0].frames[0] == PROTOCOL_TAG


def test_a_large_payload_arrives_as_a_writable_view_and_is_forwarded_without_a_copy(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    tensor = np.arange(BIG // 4, dtype=np.float32)
    for frames, copy, _ in messages.outgoing([_request(7, memoryview(tensor).cast("B"))]):
        send_frames(dealer, frames, copy)
    assert router.poll(5000, zmq.POLLIN)
    received = recv_frames(router)
    assert received[0] == b"d1" and received[1] == LARGE_TAG
    payload = received[-1]
    assert isinstance(payload, memoryview) and not payload.readonly
    assert all(type(f) is bytes for f in received[:-1])  # small frames stay bytes
    (msg,) = list(messages.iter_messages(received[1:], routed=False))
    assert isinstance(msg, messages.Message) and msg.header.request_id == 7
    view = np.frombuffer(msg.payload[0], dtype=np.float32)
    assert np.shares_memory(view, np.frombuffer(payload, dtype=np.float32))
    np.testing.assert_array_equal(view, tensor)
    # The next hop sends the view it received as is (zero-copy: no bytes() of it).
    (forward,) = messages.outgoing([messages.request(msg.header_frame, msg.payload[0], b"f")])
    assert not forward.copy and forward.frames[-1] is msg.payload[0]


def test_small_messages_still_arrive_as_bytes(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    for frames, copy, _ in messages.outgoing([_request(1, b"p" * 100)]):
        send_frames(dealer, frames, copy)
    assert router.poll(5000, zmq.POLLIN)
    assert all(type(f) is bytes for f in recv_frames(router))


def test_inproc_groups_keep_large_replies_out_of_msgpack() -> None:
    route = inproc.route(0, b"front")
    small = inproc.reply(route, 1, "OK", "", b"r")
    big_body = b"y" * BIG
    large = inproc.reply(route, 2, "OK", "", big_body)
    out = inproc.groups([small, large, small])
    assert [c for _, c in out] == [True, False, True]
    frames, _ = out[1]
    assert frames[1] == LARGE_TAG and frames[-1] is big_body
    (item,) = list(inproc.iter_inproc(frames))
    assert isinstance(item, tuple)
    (msg,) = list(messages.iter_messages(item[1], routed=True))
    assert isinstance(msg, messages.Message) and isinstance(msg.header, ReplyHeader)
    assert msg.payload[0] is big_body


def test_a_batch_never_grows_past_its_byte_cap() -> None:
    from fabric.protocol import BATCH_MAX_BYTES

    body = b"z" * (BIG - 1)  # just under the large threshold: coalesced
    batch = [_request(i, body) for i in range(2 * BATCH_MAX_BYTES // len(body) + 3)]
    out = messages.outgoing(batch)
    assert len(out) > 1 and all(o.copy for o in out)
    assert sum(len(o.messages) for o in out) == len(batch)
    assert all(sum(len(m[-1]) for m in o.messages) <= BATCH_MAX_BYTES for o in out)
