"""Work per peer per wake-up is bounded: the pure backlog, and the broker's BATCH handling on
an unbound ``BrokerServer`` (no sockets used, the dispatcher's outbox read directly)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.backlog import PeerBacklog
from broker.config import BrokerConfig
from broker.server import BrokerServer
from fabric.protocol import (
    PROTOCOL_TAG,
    TYPE_FRAME,
    Frame,
    HeartbeatHeader,
    MsgType,
    ReplyHeader,
    RequestHeader,
    decode_header,
    encode_header,
    pack_batch,
)

A, B = b"peer-a", b"peer-b"


def _noop(frames: list[Frame]) -> None:
    pass


def test_each_peer_gets_its_budget_per_wakeup_in_arrival_order() -> None:
    backlog = PeerBacklog(budget=3)
    backlog.add(A, [(_noop, [b"a%d" % i]) for i in range(7)])
    backlog.add(B, [(_noop, [b"b0"])])
    assert len(backlog) == 8 and backlog.holds(A) and backlog.holds(B)
    assert [f[0] for _, f in backlog.take(A)] == [b"a0", b"a1", b"a2"]
    assert backlog.take(A) == []  # its budget is spent for this wake-up
    assert [f[0] for _, f in backlog.take(B)] == [b"b0"]
    assert not backlog.holds(B)
    backlog.new_wakeup()
    backlog.add(A, [(_noop, [b"later"])])  # behind what it already has waiting
    taken = [f[0] for _, f in backlog.take(A)]
    backlog.new_wakeup()
    taken += [f[0] for _, f in backlog.take(A)]
    assert taken == [b"a3", b"a4", b"a5", b"a6", b"later"]
    assert not backlog


@pytest.fixture
def server() -> Iterator[BrokerServer]:
    s = BrokerServer(BrokerConfig())
    yield s
    s.close()


def _batch(*subs: list[bytes]) -> list[Frame]:
    return [A, *pack_batch(list(subs))]


def _request(rid: int) -> list[bytes]:
    header = encode_header(RequestHeader(rid, "m", "1", 0))
    return [TYPE_FRAME[MsgType.REQUEST], header, b"payload"]


def _answered(server: BrokerServer) -> list[int]:
    """Request ids answered (no worker: every request fails at once) since the last call."""
    out = []
    for _, frames in server.dispatcher.to_frontends:
        header = decode_header(MsgType.REPLY, frames[2])
        assert isinstance(header, ReplyHeader)
        out.append(header.request_id)
    server.dispatcher.to_frontends.clear()
    return out


def test_a_huge_batch_is_handled_a_budget_per_wakeup_in_order(server: BrokerServer) -> None:
    budget = server._backlog.budget
    n = budget * 3 + 5
    server._receive(_batch(*(_request(i) for i in range(n))), server._on_frontend, routed=False)
    answered = _answered(server)
    assert answered == list(range(budget))
    assert len(server._backlog) == n - budget
    # A later message of the same peer waits behind the rest of the batch.
    assert server._backlog.holds(A)
    server._receive([A, PROTOCOL_TAG, *_request(n)], server._on_frontend, routed=False)
    wakeups = 0
    while server._backlog:
        server._backlog.new_wakeup()
        for peer in server._backlog.peers():
            server._handle_waiting(peer)
        wakeups += 1
        this_wakeup = _answered(server)
        assert len(this_wakeup) <= budget
        answered += this_wakeup
    assert wakeups == 3
    assert answered == list(range(n + 1))


def test_a_batch_of_heartbeats_is_read_as_one(server: BrokerServer) -> None:
    stale = [TYPE_FRAME[MsgType.HEARTBEAT], encode_header(HeartbeatHeader(1))]
    server._receive(_batch(*([stale] * 100_000)), server._on_frontend, routed=False)
    assert len(server.dispatcher.to_frontends) == 1  # one catalog
    assert not server._backlog


def test_a_nested_batch_is_malformed_and_the_rest_goes_on(server: BrokerServer) -> None:
    nested = [TYPE_FRAME[MsgType.BATCH], pack_batch([_request(1)])[2]]
    server._receive(_batch(nested, _request(2)), server._on_frontend, routed=False)
    assert server.dispatcher.counters.requests == 1
    counted = server.metrics.registry.get_sample_value(
        "fabric_malformed_messages_total", {"tier": "broker", "reason": "batch"}
    )
    assert counted == 1
