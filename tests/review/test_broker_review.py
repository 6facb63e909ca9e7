"""Review findings in the broker: dispatch stalls and leaked leases, driven without processes."""

from __future__ import annotations

from unittest import mock

import zmq

from broker.config import BrokerConfig
from broker.dispatcher import Dispatcher
from broker.server import BrokerServer
from fabric import errors
from fabric.protocol import (
    TYPE_FRAME,
    CancelHeader,
    ModelAnnouncement,
    MsgType,
    ReplyHeader,
    RequestHeader,
    decode_header,
    encode_header,
)

FE = b"fe-1"
W1, W2 = b"w-1", b"w-2"
WALL_NS = 1_700_000_000_000_000_000


def make_dispatcher() -> Dispatcher:
    return Dispatcher(
        max_queued=100,
        heartbeat_interval_s=1.0,
        heartbeat_liveness=3,
        clock=lambda: 1000.0,
        wall_clock_ns=lambda: WALL_NS,
    )


def request(d: Dispatcher, rid: int, hedge_of: int = 0, deadline_ns: int = 0) -> None:
    header = RequestHeader(rid, "m", "1", deadline_ns, "", 0, hedge_of)
    d.on_request(FE, header, encode_header(header), b"payload")


def reply(d: Dispatcher, worker: bytes, rid: int) -> None:
    header = ReplyHeader(rid, errors.OK, "")
    d.on_reply(worker, header, encode_header(header), FE, [b"response"])


def sent_to(d: Dispatcher) -> list[tuple[bytes, int]]:
    out = []
    for worker, frames in d.to_workers:
        if frames[1] == TYPE_FRAME[MsgType.REQUEST]:
            header = decode_header(MsgType.REQUEST, frames[2])
            assert isinstance(header, RequestHeader)
            out.append((worker, header.request_id))
    d.to_workers.clear()
    return out


def test_requeued_hedge_does_not_block_the_queue() -> None:
    d = make_dispatcher()
    d.on_ready(W1, [ModelAnnouncement("m", "1", b"cfg", 1)])
    d.on_ready(W2, [ModelAnnouncement("m", "1", b"cfg", 1)])
    request(d, 1)  # first copy
    request(d, 2, hedge_of=1)  # its hedge, on the other worker
    first = dict((rid, w) for w, rid in sent_to(d))
    assert first[1] != first[2]
    hedge_worker = first[2]
    other = W1 if hedge_worker == W2 else W2
    d.on_worker_disconnect(hedge_worker)  # the hedge is requeued: it may only go to `other`
    request(d, 3)  # an ordinary request, queued behind it
    reply(d, other, 1)  # `other` is now idle, with credit
    d.on_cancel(FE, CancelHeader(2))  # and the frontend gives up on the hedge
    d.to_frontends.clear()
    # Request 3 must now run on the idle worker, not wait out its deadline in the queue.
    lease = d.leases.get((FE, 3))
    assert lease is not None and lease.worker == other, f"queued: {d.queues.depths()}"


def test_request_dropped_on_send_releases_lease_and_credit() -> None:
    config = BrokerConfig(frontend_bind="tcp://127.0.0.1:0", worker_bind="tcp://127.0.0.1:0")
    server = BrokerServer(config)
    try:
        server.bind()
        d = server.dispatcher
        # A worker the registry knows but whose pipe is full (or that just went away).
        d.on_ready(W1, [ModelAnnouncement("m", "1", b"cfg", 1)])
        d.to_workers.clear()
        d.to_frontends.clear()
        request(d, 7)
        assert (FE, 7) in d.leases
        # The worker's queue is full: every send to it fails with EAGAIN.
        with mock.patch("broker.server.send_frames", side_effect=zmq.Again()):
            server._flush()
        answered = [
            decode_header(MsgType.REPLY, frames[2])
            for _, frames in d.to_frontends
            if frames[1] == TYPE_FRAME[MsgType.REPLY]
        ]
        requeued = d.queues.depth(("m", "1")) == 1
        assert (FE, 7) not in d.leases or requeued or answered
        assert d.registry.workers[W1].credit("m") == 1
    finally:
        server.close()


def test_unknown_control_op_is_refused_at_once() -> None:
    from fabric.protocol import ControlHeader

    d = make_dispatcher()
    d.on_ready(W1, [ModelAnnouncement("m", "1", b"cfg", 1)])
    d.to_workers.clear()
    d.on_control(FE, ControlHeader(5, "format-disk", "m"))
    assert not any(f[1] == TYPE_FRAME[MsgType.CONTROL] for _, f in d.to_workers)
    assert any(f[1] == TYPE_FRAME[MsgType.CONTROL_REPLY] for _, f in d.to_frontends)
