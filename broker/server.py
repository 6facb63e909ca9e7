"""The broker's socket loop: two ROUTERs, one poller, a thin shell around ``Dispatcher``.

Each wake-up drains both sockets completely (fewer wake-ups per request under load), then
flushes the outboxes. The poll timeout is the time to the next heartbeat tick.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import zmq

from fabric import errors
from fabric.curve import CurveServer
from fabric.protocol import (
    FRAME_TYPE,
    PROTOCOL_TAG,
    TYPE_FRAME,
    CancelHeader,
    ControlHeader,
    ControlReplyHeader,
    Frame,
    HeartbeatHeader,
    MalformedMessage,
    MsgType,
    PeerId,
    ReadyHeader,
    ReplyHeader,
    RequestHeader,
    coalesce,
    decode_header,
    unpack_batch,
)
from fabric.ratelog import RateLimitedLog
from fabric.sockets import make_socket, recv_frames, send_frames, should_copy

from .backlog import PeerBacklog
from .config import BrokerConfig
from .dispatcher import Dispatcher, Outbox
from .metrics import BrokerMetrics
from .registry import AnnounceLimits

logger = logging.getLogger(__name__)

_BATCH = TYPE_FRAME[MsgType.BATCH]
_HEARTBEAT = TYPE_FRAME[MsgType.HEARTBEAT]
MAX_BATCH_RECV = 512
"""Messages read from one socket per wake-up before looking at the other one."""


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class BrokerServer:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        curve = (
            CurveServer.load(config.curve_secret_cert, config.curve_clients_dir)
            if config.curve_secret_cert
            else None
        )
        self._auth = curve.start_authenticator(self.ctx) if curve is not None else None
        self.frontends = make_socket(
            self.ctx, zmq.ROUTER, max_message_bytes=config.max_message_bytes, security=curve
        )
        self.workers = make_socket(
            self.ctx, zmq.ROUTER, max_message_bytes=config.max_message_bytes, security=curve
        )
        self.dispatcher = Dispatcher(
            max_queued=config.max_queued,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_liveness=config.heartbeat_liveness,
            limits=AnnounceLimits(
                config.max_models_per_peer, config.max_config_bytes, config.max_catalog_bytes
            ),
        )
        self.metrics = BrokerMetrics(self.dispatcher)
        # Any peer can send garbage at will: its log lines are bounded, all of it is counted.
        self._bad_log = RateLimitedLog(logger, "malformed or failing messages")
        self._backlog = PeerBacklog()  # work per peer per wake-up is bounded (see backlog.py)
        self.state = State.RUNNING
        self.frontend_endpoint = ""
        self.worker_endpoint = ""

    def bind(self) -> None:
        self.frontends.bind(self.config.frontend_bind)
        self.workers.bind(self.config.worker_bind)
        self.frontend_endpoint = self.frontends.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_endpoint = self.workers.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info(
            "broker listening: frontends on %s, workers on %s",
            self.frontend_endpoint,
            self.worker_endpoint,
        )

    def request_stop(self) -> None:
        """Signal-safe: only records the wish; the loop does the work."""
        if self.state is State.RUNNING:
            self.state = State.DRAINING

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontends, zmq.POLLIN)
        poller.register(self.workers, zmq.POLLIN)
        interval = self.config.heartbeat_interval_s
        next_tick = time.monotonic()
        drain_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self.state is State.DRAINING:
                    if drain_until is None:
                        logger.info(
                            "[shutdown] broker: draining %d leases", len(self.dispatcher.leases)
                        )
                        drain_until = now + self.config.drain_grace_s
                    if not self.dispatcher.leases or now >= drain_until:
                        self.dispatcher.fail_queued(errors.UNAVAILABLE, "broker is shutting down")
                        self._flush()
                        break
                if now >= next_tick:
                    self.dispatcher.tick()
                    self.metrics.refresh()
                    self._bad_log.flush()
                    next_tick = now + interval
                    self._flush()
                timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000)) + 1
                events = dict(poller.poll(0 if self._backlog else timeout_ms))
                self._backlog.new_wakeup()
                if self.workers in events:
                    self._drain(self.workers, self._on_worker)
                if self.frontends in events:
                    self._drain(self.frontends, self._on_frontend)
                for peer in self._backlog.peers():
                    self._handle_waiting(peer)
                self._flush()
        finally:
            self.close()

    def close(self) -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self.frontends.close(linger=0)
        self.workers.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        logger.info("[shutdown] broker: stopped")

    # ---- receive ---------------------------------------------------------------------
    def _drain(self, sock: zmq.Socket[bytes], handle: Callable[[list[Frame]], None]) -> None:
        for _ in range(MAX_BATCH_RECV):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            parts: list[Frame] = list(frames)
            if self._backlog and self._backlog.holds(bytes(parts[0])) and not _is_batch(parts):
                self._backlog.add(bytes(parts[0]), [(handle, parts)])  # keeps the peer's order
                continue
            self._handle(handle, parts)

    def _handle(self, handle: Callable[[list[Frame]], None], parts: list[Frame]) -> None:
        try:
            handle(parts)
        except MalformedMessage as exc:
            self._malformed(parts[0], _reason(parts), exc)
        except Exception:
            self.metrics.count_malformed("error")
            self._bad_log.log(
                logging.ERROR,
                parts[0].hex(),
                "error handling a message from %s",
                parts[0].hex(),
                exc_info=True,
            )

    def _handle_waiting(self, peer: PeerId) -> None:
        for handle, parts in self._backlog.take(peer):
            self._handle(handle, parts)

    def _malformed(self, peer: Frame, reason: str, exc: MalformedMessage) -> None:
        self.metrics.count_malformed(reason)
        self._bad_log.warning(
            bytes(peer).hex(), "dropped malformed message from %s: %s", bytes(peer).hex(), exc
        )

    def _on_frontend(self, frames: list[Frame]) -> None:
        if len(frames) < 4 or frames[1] != PROTOCOL_TAG:
            raise MalformedMessage("bad tag or too few frames")
        peer, msg_type = bytes(frames[0]), FRAME_TYPE.get(bytes(frames[2]))
        if msg_type is MsgType.BATCH:
            self._each_in_batch(peer, frames[3], self._on_frontend)
            return
        d = self.dispatcher
        if msg_type is MsgType.REQUEST:
            if len(frames) != 5:
                raise MalformedMessage("REQUEST needs exactly one payload frame")
            header = _typed(decode_header(MsgType.REQUEST, frames[3]), RequestHeader)
            if self.state is not State.RUNNING:
                d.reject(peer, header.request_id, errors.UNAVAILABLE, "broker is shutting down")
                return
            d.on_request(peer, header, frames[3], frames[4])
        elif msg_type is MsgType.CONTROL:
            d.on_control(peer, _typed(decode_header(MsgType.CONTROL, frames[3]), ControlHeader))
        elif msg_type is MsgType.CANCEL:
            d.on_cancel(peer, _typed(decode_header(MsgType.CANCEL, frames[3]), CancelHeader))
        elif msg_type is MsgType.HEARTBEAT:
            d.on_frontend_heartbeat(
                peer, _typed(decode_header(MsgType.HEARTBEAT, frames[3]), HeartbeatHeader)
            )
        elif msg_type is MsgType.DISCONNECT:
            d.on_frontend_disconnect(peer)
        else:
            raise MalformedMessage(f"unexpected message type {frames[2]!r} from a frontend")

    def _on_worker(self, frames: list[Frame]) -> None:
        if len(frames) < 4 or frames[1] != PROTOCOL_TAG:
            raise MalformedMessage("bad tag or too few frames")
        peer, msg_type = bytes(frames[0]), FRAME_TYPE.get(bytes(frames[2]))
        if msg_type is MsgType.BATCH:
            self._each_in_batch(peer, frames[3], self._on_worker)
            return
        d = self.dispatcher
        if msg_type is MsgType.READY:
            if not d.ready_fits(peer, len(frames[3])):
                return
            ready = _typed(decode_header(MsgType.READY, frames[3]), ReadyHeader)
            d.on_ready(peer, ready.models)
            return
        if not d.on_worker_seen(peer):
            return
        if msg_type is MsgType.REPLY:
            if len(frames) < 5:
                raise MalformedMessage("REPLY without frontend identity")
            reply = _typed(decode_header(MsgType.REPLY, frames[3]), ReplyHeader)
            d.on_reply(peer, reply, frames[3], bytes(frames[4]), frames[5:])
        elif msg_type is MsgType.ACK:
            if len(frames) < 5:
                raise MalformedMessage("ACK without frontend identity")
            d.on_ack(
                peer, _typed(decode_header(MsgType.ACK, frames[3]), CancelHeader), bytes(frames[4])
            )
        elif msg_type is MsgType.CONTROL_REPLY:
            if len(frames) < 5:
                raise MalformedMessage("CONTROL_REPLY without frontend identity")
            creply = _typed(decode_header(MsgType.CONTROL_REPLY, frames[3]), ControlReplyHeader)
            d.on_control_reply(peer, creply, bytes(frames[4]))
        elif msg_type is MsgType.HEARTBEAT:
            pass
        elif msg_type is MsgType.DISCONNECT:
            d.on_worker_disconnect(peer)
        else:
            raise MalformedMessage(f"unexpected message type {frames[2]!r} from a worker")

    # ---- send ------------------------------------------------------------------------
    def _flush(self) -> None:
        d = self.dispatcher
        for _ in range(4):  # an undeliverable request may be requeued and sent elsewhere
            if d.to_workers:
                self._send_all(self.workers, d.to_workers, "worker")
            if d.to_frontends:
                self._send_all(self.frontends, d.to_frontends, "frontend")
            if not d.to_workers and not d.to_frontends:
                return

    def _send_all(self, sock: zmq.Socket[bytes], outbox: Outbox, side: str) -> None:
        by_peer: dict[PeerId, list[list[Frame]]] = {}
        for peer, message in outbox:
            by_peer.setdefault(peer, []).append(message)
        outbox.clear()
        for peer, messages in by_peer.items():
            frames = coalesce(messages)
            try:
                send_frames(sock, [peer, *frames], should_copy(frames))
                continue
            except zmq.Again:
                logger.warning("%s %s is not reading (queue full)", side, peer.hex())
                gone = False
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                logger.debug("%s %s is gone", side, peer.hex())
                gone = True
            if side == "worker":  # requests it never got go back to the queue or fail
                self.dispatcher.undeliverable(peer, messages, gone)
            else:
                self.dispatcher.counters.dropped_replies += len(messages)

    def _each_in_batch(
        self, peer: PeerId, body: Frame, handle: Callable[[list[Frame]], None]
    ) -> None:
        """Handle each message of a BATCH; a bad one is logged and dropped, the others go on.
        Heartbeats after the first are skipped unread: one says all they would. Past the
        peer's budget for this wake-up, the rest wait their turn (``PeerBacklog``)."""
        subs = self._sift(peer, unpack_batch(body))
        backlog = self._backlog
        if backlog.holds(peer) or len(subs) > backlog.left(peer):
            backlog.add(peer, ((handle, [peer, PROTOCOL_TAG, *sub]) for sub in subs))
            self._handle_waiting(peer)
            return
        backlog.spend(peer, len(subs))
        for sub in subs:
            try:
                handle([peer, PROTOCOL_TAG, *sub])
            except MalformedMessage as exc:
                self._malformed(peer, _reason([peer, PROTOCOL_TAG, *sub]), exc)

    def _sift(self, peer: PeerId, subs: list[list[bytes]]) -> list[list[bytes]]:
        """``subs`` without nested BATCHes (malformed) and without the heartbeats after the
        first: a BATCH of many heartbeats says no more than one."""
        out = []
        heartbeat_seen = False
        for sub in subs:
            if sub[0] == _HEARTBEAT:
                if heartbeat_seen:
                    continue
                heartbeat_seen = True
            elif sub[0] == _BATCH:
                self._malformed(peer, "batch", MalformedMessage("nested BATCH"))
                continue
            out.append(sub)
        return out


T = TypeVar("T")


def _is_batch(parts: list[Frame]) -> bool:
    return len(parts) >= 4 and parts[2] == _BATCH


def _reason(frames: list[Frame]) -> str:
    """The ``reason`` label of a malformed message: the type it claimed (a bounded set)."""
    if len(frames) < 3 or frames[1] != PROTOCOL_TAG:
        return "envelope"
    msg_type = FRAME_TYPE.get(bytes(frames[2]))
    return msg_type.name.lower() if msg_type is not None else "unknown_type"


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind):
        raise MalformedMessage(f"expected {kind.__name__}")
    return value
