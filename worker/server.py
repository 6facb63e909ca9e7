"""The worker process's fabric I/O loop, between the broker's DEALER socket and the threads
that do the work: one compute thread per model instance and one control thread (repository
load/unload, polling, statistics), so that slow loads never delay heartbeats.

Those threads build their replies with ``fabric.inproc`` into a ``ReplyBuffer`` (one queue
per thread) and, at each flush, hand what they built to this loop over an inproc PUSH/PULL
pair (each thread owns its PUSH socket, so a thread's messages keep their order); only this
loop touches the broker sockets. The brokers are heartbeated;
when one goes silent its socket is replaced (after a backoff) and the models announced again.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import zmq

from fabric import errors, inproc, messages
from fabric.curve import fabric_security
from fabric.errors import RequestError
from fabric.heartbeat import Backoff, Liveness
from fabric.messages import Message
from fabric.protocol import (
    CONTROL_OPS,
    CancelHeader,
    ControlHeader,
    ControlReplyHeader,
    CreditHeader,
    Frame,
    HeartbeatHeader,
    MalformedMessage,
    ReannounceHeader,
    RequestHeader,
)
from fabric.ratelog import RateLimitedLog
from fabric.sockets import MESSAGE_SLACK_BYTES, make_socket, recv_frames, send_frames

from .config import WorkerConfig
from .devices import WorkerDevices
from .gpu_faults import DeviceHealth
from .gpu_warmup import owned_devices
from .models import ModelTable, refuse_leftovers
from .overrides import parse_load_request
from .raw_wire import RawParts, reply_too_large
from .runtime import Inbound
from .shm_payloads import ShmPayloads

logger = logging.getLogger(__name__)

_RECV_BATCH = 256
EXIT_DEVICE_LOST = 3
"""Exit status after a CUDA error poisoned the device: the supervisor starts a fresh worker."""


@dataclass
class BrokerConnection:
    index: int
    endpoint: str
    liveness: Liveness
    socket: zmq.Socket[bytes] | None = None
    reconnect_at: float = 0.0  # 0 = connected (or connecting)
    backoff: Backoff = field(default_factory=Backoff)


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class WorkerServer:
    def __init__(self, config: WorkerConfig, devices: WorkerDevices | None = None) -> None:
        self.config = config
        self.devices = devices if devices is not None else owned_devices(config.device)
        self.device = self.devices.default
        # A sticky CUDA error on any instance: stop announcing, answer what is held, exit.
        self.health = DeviceHealth()
        self.exit_code = 0
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.identity = b"wk-" + os.urandom(6)
        self.inproc_endpoint = f"inproc://worker-{self.identity.hex()}"
        self.inproc = make_socket(self.ctx, zmq.PULL)
        self.inproc.bind(self.inproc_endpoint)
        self.links = [
            BrokerConnection(
                i, ep, Liveness(config.heartbeat_interval_s, config.heartbeat_liveness)
            )
            for i, ep in enumerate(config.brokers)
        ]
        self._poller = zmq.Poller()
        self._curve = fabric_security(config, "worker")
        self.models = ModelTable(
            config.model_repository,
            self.devices,
            self._send_reply,
            config.min_credit,
            send_ack=self._send_ack,
            flush=self._flush,
            inline_max_s=config.inline_compute_ms / 1e3,
            wake=lambda: self._push(inproc.wake()),
            health=self.health,
            # Uploaded model files live in a private directory of this process, removed at exit.
            staging_root=(
                Path(tempfile.mkdtemp(prefix="fabricserve-staging-"))
                if config.allow_model_file_uploads
                else None
            ),
            allow_file_uploads=config.allow_model_file_uploads,
        )
        self.health.on_poison(lambda: self._push(inproc.wake()))
        self._shm = ShmPayloads(config.shm_transport == "auto")
        self.models.shm_domain = self._shm.domain
        self._io_thread: int | None = None  # the thread running ``serve``
        self.state = State.RUNNING
        self._local = threading.local()  # each thread's PUSH end of the inproc pipe
        # Every PUSH socket made, kept until ``close`` so that one whose thread ended (an
        # unloaded model's compute thread) is closed by the context, not by the collector.
        self._pushes: list[zmq.Socket[bytes]] = []
        self._pushes_lock = threading.Lock()
        self._out = inproc.ReplyBuffer()  # each thread's own, sent in order by its flush
        self._bad_log = RateLimitedLog(logger, "malformed or failing messages")
        self._control: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._control_thread = threading.Thread(
            target=self._control_loop, name="worker-control", daemon=True
        )

    def load_repository(self) -> None:
        self.models.load_all()
        logger.info(
            "worker %s on %s serves %s",
            self.identity.hex(),
            self.devices.describe(),
            ", ".join(f"{n}:{v}" for n, v in sorted(self.models.served)) or "nothing",
        )

    # ---- other threads → this loop ------------------------------------------------------------
    def _push(self, frames: Sequence[Frame], copy: bool = True) -> None:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = make_socket(self.ctx, zmq.PUSH)
            sock.connect(self.inproc_endpoint)
            self._local.push = sock
            with self._pushes_lock:
                self._pushes.append(sock)
        sock.send_multipart(frames, copy=copy)

    def _send_reply(
        self,
        route: inproc.Route,
        request_id: int,
        status: str,
        message: str,
        body: bytes | RawParts | None,
        more: bool = False,
    ) -> None:
        """Called once per request (``more``: a decoupled response, more follow), on the
        thread that ran it; sent at that thread's next ``_flush``."""
        if body is not None and len(body) > self.config.max_message_bytes:
            status, message, body = reply_too_large(len(body), self.config.max_message_bytes)
        body, in_slab = self._shm.outgoing(route, request_id, body, more)
        self._out.add(inproc.reply(route, request_id, status, message, body, more, in_slab))

    def _send_ack(self, route: inproc.Route, request_id: int) -> None:
        self._out.add(inproc.ack(route, request_id))

    def _flush(self) -> None:
        """Hand what this thread buffered to the I/O loop over this thread's PUSH socket (on
        the I/O thread itself: straight to the brokers), keeping the order it was built in.
        Any thread may call it; it sends only its own messages (see ``ReplyBuffer``)."""
        out = self._out.take()
        if not out:
            return
        if threading.get_ident() == self._io_thread:
            self._route([inproc.outbound(m) for m in out])
        else:
            for frames, copy in inproc.groups(out):  # large replies alone, zero-copy
                self._push(frames, copy)

    # ---- control thread ---------------------------------------------------------------------
    def _control_loop(self) -> None:
        interval = self.config.effective_poll_interval_s
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
            self._push(inproc.announce())

    def _run_control(self, header: ControlHeader, route: inproc.Route) -> None:
        status, message, bodies = errors.OK, "", []
        try:
            if header.op == "statistics":
                stats = self.models.statistics(header.model, header.version)
                bodies = [stats.SerializeToString()]
            elif header.op == "load":
                override = parse_load_request(header.body, header.model) if header.body else None
                if override is None:
                    self.models.forget_override(header.model)  # a plain load reads the repo
                    self.models.load(header.model, header.version)
                else:
                    self.models.load_override(header.model, override)
                self._push(inproc.announce())
            elif header.op == "index":
                bodies = [self.models.index().SerializeToString()]
            elif header.op == "unload":
                self.models.unload(header.model, header.version)
                self._push(inproc.announce())
        except RequestError as exc:
            status, message = exc.code, exc.message
        except Exception as exc:  # the caller must hear back, whatever went wrong
            logger.exception("control %s of %s failed", header.op, header.model)
            status, message = errors.INTERNAL, f"{header.op} failed: {exc}"
        reply = ControlReplyHeader(header.request_id, status, message, bodies)
        self._push(inproc.control_reply(route, reply))

    # ---- broker links --------------------------------------------------------------------------
    # A worker registers with every broker and splits its credit between them. Internally a
    # request's ``inproc.Route`` is its broker link's index then the frontend identity, so
    # that its reply goes back through the broker it came from.

    def _connect(self, link: BrokerConnection) -> None:
        if link.socket is not None:
            self._poller.unregister(link.socket)
            link.socket.close(linger=0)
        link.socket = make_socket(
            self.ctx,
            zmq.DEALER,
            identity=self.identity,
            max_message_bytes=self.config.max_message_bytes + MESSAGE_SLACK_BYTES,
            security=self._curve,
        )
        link.socket.connect(link.endpoint)
        self._poller.register(link.socket, zmq.POLLIN)
        link.liveness.seen()  # a fresh socket gets a full liveness period to hear back
        self._announce(link)

    def _announce(self, link: BrokerConnection | None = None) -> None:
        models = self.models.announcements() if self.state is State.RUNNING else []
        share = len(self.links)
        for m in models:  # each broker may lease this worker its share of the capacity
            m.capacity = max(1, m.capacity // share)
        frames = messages.ready(models)
        for target in [link] if link is not None else self.links:
            self._send(target, frames)

    def _send(self, link: BrokerConnection, frames: Sequence[Frame], copy: bool = True) -> bool:
        """Send to a broker without ever blocking; False when it cannot take the message
        (not connected, or its queue is full): heartbeats and reconnects deal with that."""
        if link.socket is None:
            return False
        try:
            send_frames(link.socket, frames, copy)
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
        self._poller.register(self.inproc, zmq.POLLIN)
        for link in self.links:
            self._connect(link)
        next_beat = 0.0
        drain_until: float | None = None
        heartbeat = messages.heartbeat()
        try:
            while True:
                now = time.monotonic()
                if self.health.poisoned is not None and self.state is State.RUNNING:
                    self.exit_code = EXIT_DEVICE_LOST
                    self.state = State.DRAINING  # held requests fail with the CUDA error
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
                    elif not link.reconnect_at and not link.liveness.alive():
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
                        link.liveness.seen()
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
        out: list[inproc.Outbound] = []
        for _ in range(_RECV_BATCH):
            try:
                frames = recv_frames(self.inproc)
            except zmq.Again:
                break
            try:
                for item in inproc.iter_inproc(frames):
                    if item is inproc.Signal.ANNOUNCE:
                        self._announce()
                    elif isinstance(item, tuple):
                        out.append(item)
            except MalformedMessage:
                logger.exception("dropped a malformed inproc message")
        self._route(out)

    def _route(self, out: list[inproc.Outbound]) -> None:
        """Send replies, acks and control replies, one send per broker."""
        by_link: dict[int, list[list[Frame]]] = {}
        for index, message in out:
            by_link.setdefault(index, []).append(message)
        for index, batch in by_link.items():
            for frames, copy, sent in messages.outgoing(batch):  # large replies alone, zero-copy
                if index >= len(self.links) or not self._send(self.links[index], frames, copy):
                    logger.warning("broker unreachable or not reading; %d replies dropped",
                                   len(sent))  # fmt: skip

    def _drain_broker(self, link: BrokerConnection) -> bool:
        assert link.socket is not None
        heard = False
        handle = partial(self._handle, link)
        for _ in range(_RECV_BATCH):
            try:
                frames = recv_frames(link.socket)
            except zmq.Again:
                break
            heard = True
            messages.handle_each(
                messages.iter_messages(frames, routed=True),
                handle,
                self._bad_log,
                link.endpoint,
            )
        return heard

    def _handle(self, link: BrokerConnection, msg: Message) -> None:
        match msg.header:
            case RequestHeader() as header:
                self._on_request(header, inproc.route(link.index, msg.route), msg.payload[0])
            case CancelHeader() as cancel:
                key = (inproc.route(link.index, msg.route), cancel.request_id)
                for served in self.models.served.values():
                    served.cancelled.add(key)
            case CreditHeader() as credit:
                key = (inproc.route(link.index, msg.route), credit.request_id)
                for served in self.models.served.values():
                    served.cancelled.windows.grant(key, credit.responses)
            case ControlHeader() as control:
                route = inproc.route(link.index, msg.route)
                if control.op not in CONTROL_OPS:
                    raise MalformedMessage(f"unknown control op {control.op!r}")
                self._control.put(lambda: self._run_control(control, route))
            case ReannounceHeader():
                logger.info("broker %s does not know this worker; announcing again", link.endpoint)
                self._announce(link)
            case HeartbeatHeader():
                pass
            case _:
                raise MalformedMessage(f"unexpected {msg.type.name} from a broker")

    def _on_request(self, header: RequestHeader, frontend: inproc.Route, payload: Frame) -> None:
        if header.payload_shm:
            try:
                payload = self._shm.incoming(header, frontend, self.config.max_message_bytes)
            except RequestError as exc:
                self._send_reply(frontend, header.request_id, exc.code, exc.message, None)
                self._flush()
                return
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
        inbox = served.inbox
        if served.sequences is not None:
            try:
                inbox = served.instances[served.sequences.route(header)].inbox
            except RequestError as exc:
                self._send_reply(frontend, header.request_id, exc.code, exc.message, None)
                self._flush()
                return
        served.enter()
        inbox.put(Inbound(header, frontend, payload, time.monotonic()))
        if served.closed:  # unloaded meanwhile: its instances may be gone already
            refuse_leftovers(served)
            self._flush()

    def close(self) -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self._control.put(None)
        for link in self.links:
            self._send(link, messages.disconnect())
        self.models.stop_all()
        self.models.remove_staging()
        # The control thread may be retiring an inline version, which needs this thread to
        # pump it to the end: keep pumping while waiting for it.
        give_up = time.monotonic() + 5.0
        while self._control_thread.is_alive() and time.monotonic() < give_up:
            if self._pump_inline() != 0.0:  # no batch just ran: give the control thread time
                self._control_thread.join(0.01)
        # Closes every socket, the other threads' inproc sockets included.
        self.ctx.destroy(linger=200)
        logger.info("[shutdown] worker: stopped")
