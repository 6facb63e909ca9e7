"""The worker process's fabric I/O loop, between the broker's DEALER socket and the threads
that do the work: one compute thread per model instance and one control thread (repository
load/unload, polling, statistics), so that slow loads never delay heartbeats.

Those threads hand frames back over an inproc PUSH/PULL pair (each thread owns its PUSH
socket); only this loop touches the broker socket. Inproc frames: ``[type byte, header,
frontend identity, body?]``, or ``[b"announce"]`` after the served models changed. The broker
is heartbeated; when it goes silent the socket is replaced and the models announced again.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import zmq

from fabric import errors
from fabric.curve import fabric_security
from fabric.errors import RequestError
from fabric.heartbeat import Backoff
from fabric.protocol import (
    CONTROL_OPS,
    FRAME_TYPE,
    PROTOCOL_TAG,
    TYPE_FRAME,
    CancelHeader,
    ControlHeader,
    ControlReplyHeader,
    HeartbeatHeader,
    MalformedMessage,
    MsgType,
    PeerId,
    ReadyHeader,
    ReplyHeader,
    RequestHeader,
    decode_header,
    encode_header,
    pack_batch,
    unpack_batch,
)
from fabric.sockets import make_socket, recv_frames, send_frames, should_copy

from .config import WorkerConfig
from .models import ModelTable, refuse_leftovers
from .runtime import Inbound

logger = logging.getLogger(__name__)

_REPLY = TYPE_FRAME[MsgType.REPLY]
_READY = TYPE_FRAME[MsgType.READY]
_HEARTBEAT = TYPE_FRAME[MsgType.HEARTBEAT]
_DISCONNECT = TYPE_FRAME[MsgType.DISCONNECT]
_CONTROL_REPLY = TYPE_FRAME[MsgType.CONTROL_REPLY]
_ACK = TYPE_FRAME[MsgType.ACK]
_ANNOUNCE = b"announce"
_GROUP = b"group"  # inproc: several messages from one thread, msgpack list of frame lists
_WAKE = b"wake"  # inproc: nothing to send; the loop is to look at its inline instances
_BATCH = TYPE_FRAME[MsgType.BATCH]
_RECV_BATCH = 256


@dataclass
class BrokerLink:
    index: int
    endpoint: str
    socket: zmq.Socket[bytes] | None = None
    last_heard: float = 0.0
    reconnect_at: float = 0.0  # 0 = connected (or connecting)
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def route_prefix(self) -> bytes:
        return bytes([self.index])


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def pick_device(requested: str) -> str:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class WorkerServer:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.identity = b"wk-" + os.urandom(6)
        self.inproc_endpoint = f"inproc://worker-{self.identity.hex()}"
        self.inproc = make_socket(self.ctx, zmq.PULL)
        self.inproc.bind(self.inproc_endpoint)
        self.links = [BrokerLink(i, ep) for i, ep in enumerate(config.brokers)]
        self._poller = zmq.Poller()
        self._curve = fabric_security(config, "worker")
        self.models = ModelTable(
            config.model_repository,
            self.device,
            self._send_reply,
            config.min_credit,
            send_ack=self._send_ack,
            flush=self._flush,
            inline_max_s=config.inline_compute_ms / 1e3,
            wake=lambda: self._push([_WAKE]),
        )
        self._io_thread: int | None = None  # the thread running ``serve``
        self.state = State.RUNNING
        self._local = threading.local()
        self._control: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._control_thread = threading.Thread(
            target=self._control_loop, name="worker-control", daemon=True
        )

    def load_repository(self) -> None:
        self.models.load_all()
        logger.info(
            "worker %s on %s serves %s",
            self.identity.hex(),
            self.device,
            ", ".join(f"{n}:{v}" for n, v in sorted(self.models.served)) or "nothing",
        )

    # ---- other threads → this loop ------------------------------------------------------------
    def _push(self, frames: list[bytes]) -> None:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = make_socket(self.ctx, zmq.PUSH)
            sock.connect(self.inproc_endpoint)
            self._local.push = sock
        sock.send_multipart(frames, copy=should_copy(frames))

    def _send_reply(
        self, frontend: PeerId, request_id: int, status: str, message: str, body: bytes | None
    ) -> None:
        """Called once per request, on the thread that ran it; sent at its next ``_flush``."""
        header = msgspec.msgpack.encode(ReplyHeader(request_id, status, message))
        frames = [_REPLY, header, frontend] if body is None else [_REPLY, header, frontend, body]
        self._pending().append(frames)

    def _pending(self) -> list[list[bytes]]:
        pending: list[list[bytes]] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def _flush(self) -> None:
        """Hand this thread's buffered messages to the I/O loop as one inproc message (on
        the I/O thread itself: straight to the brokers)."""
        pending = self._pending()
        if not pending:
            return
        if threading.get_ident() == self._io_thread:
            self._route(list(pending))
        elif len(pending) == 1:
            self._push(pending[0])
        else:
            self._push([_GROUP, msgspec.msgpack.encode(pending)])
        pending.clear()

    def _send_ack(self, frontend: PeerId, request_id: int) -> None:
        self._pending().append([_ACK, msgspec.msgpack.encode(CancelHeader(request_id)), frontend])

    # ---- control thread ---------------------------------------------------------------------
    def _control_loop(self) -> None:
        interval = self.config.poll_interval_s
        while True:
            try:
                job = self._control.get(timeout=interval) if interval > 0 else self._control.get()
            except queue.Empty:
                job = self._poll
            if job is None:
                push = getattr(self._local, "push", None)
                if push is not None:  # this thread's end of the inproc pipe
                    push.close(linger=200)
                return
            try:
                job()
            except Exception:
                logger.exception("control job failed")

    def _poll(self) -> None:
        if self.state is State.RUNNING and self.models.poll():
            self._push([_ANNOUNCE])

    def _run_control(self, header: ControlHeader, frontend: PeerId) -> None:
        status, message, bodies = errors.OK, "", []
        try:
            if header.op == "statistics":
                stats = self.models.statistics(header.model, header.version)
                bodies = [stats.SerializeToString()]
            elif header.op == "load":
                self.models.load(header.model, header.version)
                self._push([_ANNOUNCE])
            elif header.op == "unload":
                self.models.unload(header.model, header.version)
                self._push([_ANNOUNCE])
        except RequestError as exc:
            status, message = exc.code, exc.message
        except Exception as exc:  # the caller must hear back, whatever went wrong
            logger.exception("control %s of %s failed", header.op, header.model)
            status, message = errors.INTERNAL, f"{header.op} failed: {exc}"
        reply = ControlReplyHeader(header.request_id, status, message, bodies)
        self._push([_CONTROL_REPLY, msgspec.msgpack.encode(reply), frontend])

    # ---- broker links --------------------------------------------------------------------------
    # A worker registers with every broker and splits its credit between them. Internally a
    # request's route is its broker link's index (one byte) then the frontend identity, so
    # that its reply goes back through the broker it came from.

    def _connect(self, link: BrokerLink) -> None:
        if link.socket is not None:
            self._poller.unregister(link.socket)
            link.socket.close(linger=0)
        link.socket = make_socket(
            self.ctx,
            zmq.DEALER,
            identity=self.identity,
            max_message_bytes=self.config.max_message_bytes,
            security=self._curve,
        )
        link.socket.connect(link.endpoint)
        self._poller.register(link.socket, zmq.POLLIN)
        link.last_heard = time.monotonic()
        self._announce(link)

    def _announce(self, link: BrokerLink | None = None) -> None:
        models = self.models.announcements() if self.state is State.RUNNING else []
        share = len(self.links)
        for m in models:  # each broker may lease this worker its share of the capacity
            m.capacity = max(1, m.capacity // share)
        frames = [PROTOCOL_TAG, _READY, encode_header(ReadyHeader(models))]
        for target in [link] if link is not None else self.links:
            self._send(target, frames)

    def _send(self, link: BrokerLink, frames: Sequence[bytes | memoryview]) -> bool:
        """Send to a broker without ever blocking; False when it cannot take the message
        (not connected, or its queue is full): heartbeats and reconnects deal with that."""
        if link.socket is None:
            return False
        try:
            send_frames(link.socket, frames, should_copy(frames))
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:  # socket closed or context ending (shutdown)
            logger.debug("send to %s failed: %s", link.endpoint, exc)
            return False
        return True

    def request_stop(self) -> None:
        """Signal-safe: records the wish; the loop drains and stops."""
        if self.state is State.RUNNING:
            self.state = State.DRAINING

    def serve(self) -> None:
        self._io_thread = threading.get_ident()
        self._control_thread.start()
        interval = self.config.heartbeat_interval_s
        ttl = interval * self.config.heartbeat_liveness
        self._poller.register(self.inproc, zmq.POLLIN)
        for link in self.links:
            self._connect(link)
        next_beat = 0.0
        drain_until: float | None = None
        heartbeat = [PROTOCOL_TAG, _HEARTBEAT, encode_header(HeartbeatHeader())]
        try:
            while True:
                now = time.monotonic()
                if self.state is State.DRAINING:
                    if drain_until is None:
                        logger.info(
                            "[shutdown] worker: draining %d requests", self.models.pending()
                        )
                        drain_until = now + self.config.drain_grace_s
                        self._announce()  # no models: the brokers send nothing new
                    if self.models.pending() == 0 or now >= drain_until:
                        self._forward()
                        break
                if now >= next_beat:
                    for link in self.links:
                        self._send(link, heartbeat)
                    next_beat = now + interval
                for link in self.links:
                    if link.reconnect_at and now >= link.reconnect_at:
                        link.reconnect_at = 0.0
                        self._connect(link)
                    elif not link.reconnect_at and now - link.last_heard > ttl:
                        delay = link.backoff.next_delay_s()
                        logger.warning(
                            "broker %s silent; reconnecting in %.2fs", link.endpoint, delay
                        )
                        link.reconnect_at = now + delay
                wake = min([next_beat, *(k.reconnect_at for k in self.links if k.reconnect_at)])
                pump_s = self._pump_inline()
                if pump_s is not None:
                    wake = min(wake, time.monotonic() + pump_s)
                if pump_s == 0.0:
                    timeout_ms = 0  # a batch just ran: read what came meanwhile, then go on
                else:
                    timeout_ms = max(1, math.ceil((wake - time.monotonic()) * 1000))
                events = dict(self._poller.poll(timeout_ms))
                if self.inproc in events:
                    self._forward()
                for link in self.links:
                    if link.socket in events and self._drain_broker(link):
                        link.last_heard = time.monotonic()
                        link.backoff.reset()
                        # The broker is there after all (this process was only paused, e.g.
                        # SIGSTOP): a reconnect now would drop, with the old socket, requests
                        # the broker has just leased to this worker again.
                        link.reconnect_at = 0.0
        finally:
            self.close()

    def _pump_inline(self) -> float | None:
        """Run what the inline instances have ready (one batch each); seconds until the
        soonest wants to run again, None when none holds anything."""
        soonest: float | None = None
        for inst in self.models.inline:
            if inst.inline:
                wait_s = inst.pump()
                if wait_s is not None and (soonest is None or wait_s < soonest):
                    soonest = wait_s
                elif inst.orphaned and inst.finished:
                    self.models.reap(inst)
        return soonest

    def _forward(self) -> None:
        """Everything the other threads handed over since the last wake-up, one send per
        broker."""
        messages: list[list[bytes]] = []
        for _ in range(_RECV_BATCH):
            try:
                frames = recv_frames(self.inproc)
            except zmq.Again:
                break
            if frames[0] == _WAKE:
                continue
            if frames[0] == _ANNOUNCE:
                self._announce()
            elif frames[0] == _GROUP:
                messages.extend(unpack_batch(frames[1]))
            else:
                messages.append(frames)
        self._route(messages)

    def _route(self, messages: list[list[bytes]]) -> None:
        """Send replies, acks and control replies, one send per broker."""
        by_link: dict[int, list[list[bytes]]] = {}
        for m in messages:  # [type, header, route, *body]: route = link index + frontend
            route = m[2]
            m[2] = route[1:]
            by_link.setdefault(route[0], []).append(m)
        for index, batch in by_link.items():
            out = [PROTOCOL_TAG, *batch[0]] if len(batch) == 1 else pack_batch(batch)
            if index >= len(self.links) or not self._send(self.links[index], out):
                logger.warning("broker unreachable or not reading; %d replies dropped",
                               len(batch))  # fmt: skip

    def _drain_broker(self, link: BrokerLink) -> bool:
        assert link.socket is not None
        heard = False
        for _ in range(_RECV_BATCH):
            try:
                frames = recv_frames(link.socket)
            except zmq.Again:
                break
            heard = True
            try:
                self._handle(link, frames)
            except MalformedMessage as exc:
                logger.warning("dropped malformed message from %s: %s", link.endpoint, exc)
            except Exception:
                logger.exception("error handling a message from %s", link.endpoint)
        return heard

    def _handle(self, link: BrokerLink, frames: list[bytes]) -> None:
        if len(frames) < 3 or frames[0] != PROTOCOL_TAG:
            raise MalformedMessage("bad tag or too few frames")
        msg_type = FRAME_TYPE.get(frames[1])
        if msg_type is MsgType.BATCH:
            for sub in unpack_batch(frames[2]):
                if sub[0] == _BATCH:
                    raise MalformedMessage("nested BATCH")
                self._handle(link, [PROTOCOL_TAG, *sub])
            return
        if msg_type is MsgType.REQUEST:
            if len(frames) != 5:
                raise MalformedMessage("REQUEST needs frontend identity and one payload")
            header = decode_header(MsgType.REQUEST, frames[2])
            assert isinstance(header, RequestHeader)
            self._on_request(header, link.route_prefix + frames[3], frames[4])
        elif msg_type is MsgType.CANCEL:
            cancel = decode_header(MsgType.CANCEL, frames[2])
            assert isinstance(cancel, CancelHeader)
            key = (link.route_prefix + frames[3], cancel.request_id)
            for served in self.models.served.values():
                served.cancelled.add(key)
        elif msg_type is MsgType.CONTROL:
            control = decode_header(MsgType.CONTROL, frames[2])
            assert isinstance(control, ControlHeader)
            route = link.route_prefix + frames[3]
            if control.op not in CONTROL_OPS:
                raise MalformedMessage(f"unknown control op {control.op!r}")
            self._control.put(lambda: self._run_control(control, route))
        elif msg_type is MsgType.DISCONNECT:
            logger.info("broker %s does not know this worker; announcing again", link.endpoint)
            self._announce(link)
        elif msg_type is MsgType.HEARTBEAT:
            pass
        else:
            raise MalformedMessage(f"unexpected message type {frames[1]!r}")

    def _on_request(self, header: RequestHeader, frontend: PeerId, payload: bytes) -> None:
        version = header.version or self.models.latest.get(header.model, "")
        served = self.models.served.get((header.model, version))
        if served is None:
            self._send_reply(
                frontend,
                header.request_id,
                errors.NOT_FOUND,
                f"model '{header.model}' version '{version}' is not loaded here",
                None,
            )
            self._flush()
            return
        if served.max_queued and served.pending >= served.max_queued:
            self._send_reply(
                frontend,
                header.request_id,
                errors.RESOURCE_EXHAUSTED,
                f"model '{header.model}' queue is full ({served.max_queued} requests, "
                "dynamic_batching.default_queue_policy.max_queue_size)",
                None,
            )
            self._flush()
            return
        served.enter()
        served.inbox.put(Inbound(header, frontend, payload, time.monotonic()))
        if served.closed:  # unloaded meanwhile: its instances may be gone already
            refuse_leftovers(served)
            self._flush()

    def close(self) -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self._control.put(None)
        for link in self.links:
            self._send(link, [PROTOCOL_TAG, _DISCONNECT, encode_header(HeartbeatHeader())])
        self.models.stop_all()
        # The control thread may be retiring an inline version, which needs this thread to
        # pump it to the end: keep pumping while waiting for it.
        give_up = time.monotonic() + 5.0
        while self._control_thread.is_alive() and time.monotonic() < give_up:
            if self._pump_inline() != 0.0:  # no batch just ran: give the control thread time
                self._control_thread.join(0.01)
        # Closes every socket, the other threads' inproc sockets included.
        self.ctx.destroy(linger=200)
        logger.info("[shutdown] worker: stopped")
