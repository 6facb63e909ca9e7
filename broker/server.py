"""The broker's socket loop: two ROUTERs, one poller, a thin shell around ``Dispatcher``.

Each wake-up drains both sockets (fewer wake-ups per request under load), then flushes the
outboxes. The poll timeout is the time to the next heartbeat tick. No peer can stall the
others: each gets a bounded number of messages handled per wake-up, the rest of a large BATCH
waits its turn (``PeerBacklog``); malformed input is counted and logged at a bounded rate.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator

import zmq

from fabric import errors, messages
from fabric.curve import broker_security, check_endpoints
from fabric.messages import Message
from fabric.protocol import (
    AckHeader,
    CancelHeader,
    ControlHeader,
    ControlReplyHeader,
    CreditHeader,
    DisconnectHeader,
    Frame,
    HeartbeatHeader,
    MalformedMessage,
    MsgType,
    PeerId,
    ReadyHeader,
    ReplyHeader,
    RequestHeader,
)
from fabric.ratelog import RateLimitedLog
from fabric.sockets import MESSAGE_SLACK_BYTES, make_socket, recv_frames, send_frames

from .backlog import PeerBacklog
from .config import BrokerConfig
from .dispatcher import Dispatcher, Outbox
from .metrics import BrokerMetrics
from .registry import AnnounceLimits

logger = logging.getLogger(__name__)

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
        curve = broker_security(
            config.fabric_keys,
            config.curve_secret_cert,
            config.curve_frontends_dir,
            config.curve_workers_dir,
        )
        check_endpoints(
            (config.frontend_bind, config.worker_bind),
            curve=curve is not None,
            insecure=config.insecure_fabric,
        )
        self._auth = curve.start_authenticator(self.ctx) if curve is not None else None
        self.frontends = make_socket(
            self.ctx,
            zmq.ROUTER,
            max_message_bytes=config.max_message_bytes + MESSAGE_SLACK_BYTES,
            security=curve.for_frontends if curve is not None else None,
        )
        self.workers = make_socket(
            self.ctx,
            zmq.ROUTER,
            max_message_bytes=config.max_message_bytes + MESSAGE_SLACK_BYTES,
            security=curve.for_workers if curve is not None else None,
            handover=True,  # workers keep their identity across reconnects
        )
        self.dispatcher = Dispatcher(
            max_queued=config.max_queued,
            max_queued_bytes=config.max_queued_bytes,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_liveness=config.heartbeat_liveness,
            limits=AnnounceLimits(
                config.max_models_per_peer, config.max_config_bytes, config.max_catalog_bytes
            ),
        )
        self.metrics = BrokerMetrics(self.dispatcher)
        # Any peer can send garbage at will: its log lines are bounded, all of it is counted.
        self._bad_log = RateLimitedLog(logger, "malformed or failing messages")
        self._backlog: PeerBacklog[Waiting] = PeerBacklog()
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
                    self._drain(self.workers, self._on_worker, routed=True)
                if self.frontends in events:
                    self._drain(self.frontends, self._on_frontend, routed=False)
                for peer in self._backlog.peers():
                    self._handle_waiting(peer)
                self._flush()
        finally:
            self.close()

    def close(self) -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        if self.dispatcher.spans is not None:  # requests it never answered
            self.dispatcher.spans.close()
        self.frontends.close(linger=0)
        self.workers.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        logger.info("[shutdown] broker: stopped")

    # ---- receive ---------------------------------------------------------------------
    def _drain(self, sock: zmq.Socket[bytes], handle: Handler, routed: bool) -> None:
        for _ in range(MAX_BATCH_RECV):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            self._receive(frames, handle, routed)

    def _receive(self, frames: list[Frame], handle: Handler, routed: bool) -> None:
        """Handle one ZeroMQ message as a ROUTER received it (identity first), within the
        peer's budget for this wake-up; what is past the budget waits its turn."""
        peer: PeerId = frames[0]  # type: ignore[assignment]  # frames before LARGE_TAG are bytes
        if routed and not self._ready_fits(peer, frames):
            return
        backlog = self._backlog
        read = messages.iter_messages(frames[1:], routed=routed)
        if backlog.holds(peer):  # behind what it already has waiting
            backlog.add(peer, _sifted(read, handle))
            return
        left = backlog.left(peer)
        handled = 0
        heartbeat_seen = False
        for msg in read:
            if type(msg) is Message and msg.type is MsgType.HEARTBEAT:
                if heartbeat_seen:  # a BATCH of many heartbeats says no more than one
                    continue
                heartbeat_seen = True
            if handled == left:  # the rest of a large BATCH waits its turn
                backlog.add(peer, [(handle, msg), *_sifted(read, handle, heartbeat_seen)])
                break
            handled += 1
            self._handle(peer, handle, msg)
        backlog.spend(peer, handled)

    def _ready_fits(self, peer: PeerId, frames: list[Frame]) -> bool:
        """A READY larger than the catalog may be is refused unread (decoding megabytes of
        configs stalls every peer)."""
        size = messages.ready_header_bytes(frames, at=1)
        return not size or self.dispatcher.ready_fits(peer, size)

    def _handle(self, peer: PeerId, handle: Handler, msg: Message | MalformedMessage) -> None:
        try:
            if isinstance(msg, MalformedMessage):
                raise msg
            handle(peer, msg)
        except MalformedMessage as exc:
            self.metrics.count_malformed(_reason(msg))
            self._bad_log.warning(
                peer.hex(), "dropped malformed message from %s: %s", peer.hex(), exc
            )
        except Exception:
            self.metrics.count_malformed("error")
            self._bad_log.log(
                logging.ERROR, peer.hex(), "error handling a message from %s", peer.hex(),
                exc_info=True,
            )  # fmt: skip

    def _handle_waiting(self, peer: PeerId) -> None:
        for handle, msg in self._backlog.take(peer):
            self._handle(peer, handle, msg)

    def _on_frontend(self, peer: PeerId, msg: Message) -> None:
        d = self.dispatcher
        match msg.header:
            case RequestHeader() as header:
                if self.state is not State.RUNNING:
                    d.reject(peer, header.request_id, errors.UNAVAILABLE, "broker is shutting down")
                    return
                d.on_request(peer, header, msg.header_frame, msg.payload[0])
            case ControlHeader() as control:
                d.on_control(peer, control)
            case CancelHeader() as cancel:
                d.on_cancel(peer, cancel)
            case CreditHeader() as credit:
                d.on_credit(peer, credit)
            case HeartbeatHeader() as heartbeat:
                d.on_frontend_heartbeat(peer, heartbeat)
            case DisconnectHeader():
                d.on_frontend_disconnect(peer)
            case _:
                raise MalformedMessage(f"unexpected {msg.type.name} from a frontend")

    def _on_worker(self, peer: PeerId, msg: Message) -> None:
        d = self.dispatcher
        header = msg.header
        if isinstance(header, ReadyHeader):
            if d.ready_fits(peer, len(msg.header_frame)):  # a READY inside a BATCH
                d.on_ready(peer, header.models)
            return
        if not d.on_worker_seen(peer):
            return
        match header:
            case ReplyHeader():
                d.on_reply(peer, header, msg.header_frame, msg.route, msg.payload)
            case AckHeader():
                d.on_ack(peer, header, msg.route)
            case ControlReplyHeader():
                d.on_control_reply(peer, header, msg.route)
            case HeartbeatHeader():
                pass
            case DisconnectHeader():
                d.on_worker_disconnect(peer)
            case _:
                raise MalformedMessage(f"unexpected {msg.type.name} from a worker")

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
        for peer, queued in by_peer.items():
            for frames, copy, sent in messages.outgoing(queued):  # large ones alone, zero-copy
                try:
                    send_frames(sock, [peer, *frames], copy)
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
                    self.dispatcher.undeliverable(peer, [list(m) for m in sent], gone)
                else:
                    self.dispatcher.counters.dropped_replies += len(sent)


Handler = Callable[[PeerId, Message], None]
Waiting = tuple[Handler, Message | MalformedMessage]


def _sifted(
    read: Iterator[Message | MalformedMessage], handle: Handler, heartbeat_seen: bool = False
) -> Iterator[Waiting]:
    """The messages of one ZeroMQ message, each with its handler, without the heartbeats after
    the first: a BATCH of many heartbeats says no more than one."""
    for msg in read:
        if isinstance(msg, Message) and msg.type is MsgType.HEARTBEAT:
            if heartbeat_seen:
                continue
            heartbeat_seen = True
        yield handle, msg


def _reason(msg: Message | MalformedMessage) -> str:
    """The ``reason`` label of a malformed message: the type it claimed (a bounded set)."""
    if isinstance(msg, Message):
        return msg.type.name.lower()
    return msg.reason
