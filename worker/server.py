"""The worker process: loads the repository, starts a compute thread per model instance, and
runs the fabric I/O loop between the broker's DEALER socket and the compute threads.

Frames from compute threads come back over an inproc PUSH/PULL pair (each thread owns its
PUSH socket), so only this loop ever touches the broker socket. The broker is heartbeated;
when it goes silent the socket is replaced and the models announced again (Paranoid Pirate).
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import msgspec
import zmq

from fabric import errors
from fabric.heartbeat import Backoff
from fabric.protocol import (
    FRAME_TYPE,
    PROTOCOL_TAG,
    TYPE_FRAME,
    CancelHeader,
    HeartbeatHeader,
    MalformedMessage,
    ModelAnnouncement,
    MsgType,
    PeerId,
    ReadyHeader,
    ReplyHeader,
    RequestHeader,
    decode_header,
    encode_header,
)
from fabric.sockets import make_socket

from .config import WorkerConfig
from .loaders import LoadedModel, ModelLoadError, load_model
from .model_config import model_config_bytes
from .repository import scan_repository
from .runtime import Cancel, Inbound, ModelInstance
from .stats import ModelStats

logger = logging.getLogger(__name__)

_REPLY = TYPE_FRAME[MsgType.REPLY]
_READY = TYPE_FRAME[MsgType.READY]
_HEARTBEAT = TYPE_FRAME[MsgType.HEARTBEAT]
_DISCONNECT = TYPE_FRAME[MsgType.DISCONNECT]
_RECV_BATCH = 256


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class ServedVersion:
    model: LoadedModel
    inbox: queue.SimpleQueue[object]
    instances: list[ModelInstance]
    stats: ModelStats
    capacity: int
    in_flight: dict[tuple[PeerId, int], bool] = field(default_factory=dict)


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
        self.replies_endpoint = f"inproc://replies-{self.identity.hex()}"
        self.replies = make_socket(self.ctx, zmq.PULL)
        self.replies.bind(self.replies_endpoint)
        self.broker: zmq.Socket[bytes] | None = None
        self.versions: dict[tuple[str, str], ServedVersion] = {}
        self.latest: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self.state = State.RUNNING
        self._local = threading.local()
        self._in_flight = 0
        self._lock = threading.Lock()

    # ---- models -----------------------------------------------------------------------
    def load_repository(self) -> None:
        sources = scan_repository(self.config.model_repository, errors=self.load_errors)
        for source in sources:
            for version in source.versions:
                try:
                    model = load_model(source, version, self.device)
                except ModelLoadError as exc:
                    logger.error("%s", exc)
                    self.load_errors[f"{source.name}:{version}"] = str(exc)
                    continue
                self._serve(model)
        for name in {n for n, _ in self.versions}:
            self.latest[name] = max(
                (v for n, v in self.versions if n == name), key=lambda v: int(v)
            )
        logger.info(
            "worker %s on %s serves %s",
            self.identity.hex(),
            self.device,
            ", ".join(f"{n}:{v}" for n, v in sorted(self.versions)) or "nothing",
        )

    def _serve(self, model: LoadedModel) -> None:
        spec = model.spec
        inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        stats = ModelStats()
        instances = [
            ModelInstance(model, i, self._send_reply, stats, inbox)
            for i in range(max(1, spec.instance_count))
        ]
        rows = max(1, spec.max_batch_size)
        capacity = max(self.config.min_credit, 2 * rows * len(instances))
        served = ServedVersion(model, inbox, instances, stats, capacity)
        self.versions[(spec.name, model.version)] = served
        for inst in instances:
            inst.start()

    def announcements(self) -> list[ModelAnnouncement]:
        if self.state is not State.RUNNING:
            return []
        return [
            ModelAnnouncement(name, version, model_config_bytes(s.model.spec), s.capacity)
            for (name, version), s in sorted(self.versions.items())
        ]

    # ---- replies from compute threads ----------------------------------------------------
    def _send_reply(
        self, frontend: PeerId, request_id: int, status: str, message: str, body: bytes | None
    ) -> None:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = make_socket(self.ctx, zmq.PUSH)
            sock.connect(self.replies_endpoint)
            self._local.push = sock
        header = msgspec.msgpack.encode(ReplyHeader(request_id, status, message))
        frames: list[bytes] = [header, frontend] if body is None else [header, frontend, body]
        sock.send_multipart(frames, copy=body is None or len(body) < 65536)

    # ---- broker link ------------------------------------------------------------------------
    def _connect(self) -> zmq.Socket[bytes]:
        if self.broker is not None:
            self.broker.close(linger=0)
        sock = make_socket(
            self.ctx,
            zmq.DEALER,
            identity=self.identity,
            max_message_bytes=self.config.max_message_bytes,
        )
        sock.connect(self.config.broker)
        self.broker = sock
        self._announce()
        return sock

    def _announce(self) -> None:
        assert self.broker is not None
        self.broker.send_multipart(
            [PROTOCOL_TAG, _READY, encode_header(ReadyHeader(self.announcements()))]
        )

    def request_stop(self) -> None:
        """Signal-safe: records the wish; the loop drains and stops."""
        if self.state is State.RUNNING:
            self.state = State.DRAINING

    def serve(self) -> None:
        interval = self.config.heartbeat_interval_s
        ttl = interval * self.config.heartbeat_liveness
        sock = self._connect()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        last_heard = time.monotonic()
        next_beat = 0.0
        backoff = Backoff(base_s=interval / 2, cap_s=max(interval * 8, 2.0))
        drain_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self.state is State.DRAINING:
                    if drain_until is None:
                        logger.info("[shutdown] worker: draining %d requests", self._in_flight)
                        drain_until = now + self.config.drain_grace_s
                        self._announce()  # no models: the broker sends nothing new
                    if self._in_flight == 0 or now >= drain_until:
                        break
                if now >= next_beat:
                    sock.send_multipart(
                        [PROTOCOL_TAG, _HEARTBEAT, encode_header(HeartbeatHeader())], zmq.NOBLOCK
                    )
                    next_beat = now + interval
                if now - last_heard > ttl:
                    delay = backoff.next_delay_s()
                    logger.warning(
                        "broker %s silent; reconnecting in %.2fs", self.config.broker, delay
                    )
                    time.sleep(delay)
                    poller.unregister(sock)
                    sock = self._connect()
                    poller.register(sock, zmq.POLLIN)
                    last_heard = time.monotonic()
                    continue
                timeout_ms = max(1, int((next_beat - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if self.replies in events:
                    self._forward_replies(sock)
                if sock in events and self._drain_broker(sock):
                    last_heard = time.monotonic()
                    backoff.reset()
        finally:
            self.close()

    def _forward_replies(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(_RECV_BATCH):
            try:
                frames = self.replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            with self._lock:
                self._in_flight -= 1
            try:
                sock.send_multipart([PROTOCOL_TAG, _REPLY, *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                logger.warning("broker not reading; reply dropped")

    def _drain_broker(self, sock: zmq.Socket[bytes]) -> bool:
        heard = False
        for _ in range(_RECV_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            heard = True
            try:
                self._handle(sock, frames)
            except MalformedMessage as exc:
                logger.warning("dropped malformed message from the broker: %s", exc)
            except Exception:
                logger.exception("error handling a broker message")
        return heard

    def _handle(self, sock: zmq.Socket[bytes], frames: list[zmq.Frame]) -> None:
        if len(frames) < 3 or frames[0].bytes != PROTOCOL_TAG:
            raise MalformedMessage("bad tag or too few frames")
        msg_type = FRAME_TYPE.get(frames[1].bytes)
        if msg_type is MsgType.REQUEST:
            if len(frames) != 5:
                raise MalformedMessage("REQUEST needs frontend identity and one payload")
            header = decode_header(MsgType.REQUEST, frames[2].buffer)
            assert isinstance(header, RequestHeader)
            self._on_request(header, frames[3].bytes, frames[4].buffer)
        elif msg_type is MsgType.CANCEL:
            cancel = decode_header(MsgType.CANCEL, frames[2].buffer)
            assert isinstance(cancel, CancelHeader)
            for served in self.versions.values():
                served.inbox.put(Cancel(frames[3].bytes, cancel.request_id))
        elif msg_type is MsgType.DISCONNECT:
            logger.info("broker does not know this worker; announcing again")
            self._announce()
        elif msg_type is MsgType.HEARTBEAT:
            pass
        else:
            raise MalformedMessage(f"unexpected message type {frames[1].bytes!r}")

    def _on_request(self, header: RequestHeader, frontend: PeerId, payload: memoryview) -> None:
        version = header.version or self.latest.get(header.model, "")
        served = self.versions.get((header.model, version))
        with self._lock:
            self._in_flight += 1
        if served is None:
            self._send_reply(
                frontend,
                header.request_id,
                errors.NOT_FOUND,
                f"model '{header.model}' version '{version}' is not loaded here",
                None,
            )
            return
        served.inbox.put(Inbound(header, frontend, payload, time.monotonic()))

    def close(self) -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        if self.broker is not None:
            try:
                self.broker.send_multipart(
                    [PROTOCOL_TAG, _DISCONNECT, encode_header(HeartbeatHeader())], zmq.NOBLOCK
                )
            except zmq.ZMQError:
                pass
        for served in self.versions.values():
            for inst in served.instances:
                inst.stop()
        for served in self.versions.values():
            for inst in served.instances:
                inst.join(2.0)
            served.model.close()
        # Closes every socket, the compute threads' reply sockets included.
        self.ctx.destroy(linger=200)
        logger.info("[shutdown] worker: stopped")
