"""The frontend's link to its brokers: one DEALER per broker, replies resolved as futures by id.

A plain ZeroMQ socket per broker is driven by ``loop.add_reader`` on its file descriptor and
sent to without blocking (cheaper than zmq.asyncio). Heartbeats keep each broker's liveness and
its catalog (the model versions its workers serve) fresh. When a broker goes silent, every
request waiting on it fails UNAVAILABLE at once, so the caller can retry elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import zmq

from fabric import errors, messages
from fabric.errors import RequestError
from fabric.heartbeat import Liveness
from fabric.messages import Message
from fabric.protocol import (
    FLAG_NON_IDEMPOTENT,
    CatalogEntry,
    CatalogHeader,
    ControlHeader,
    ControlReplyHeader,
    Frame,
    HeartbeatHeader,
    MalformedMessage,
    ReplyHeader,
    RequestHeader,
    ShmRef,
)
from fabric.ratelog import RateLimitedLog
from fabric.shm_transport import MIN_BYTES as SHM_MIN_BYTES
from fabric.shm_transport import Slab, SlabPool, domain_if
from fabric.sockets import (
    DEFAULT_HWM,
    SocketSecurity,
    make_socket,
    readable,
    recv_frames,
    send_frames,
)

from .brokers import BrokerGate, choose_broker, shm_models
from .route_state import RouteStates

logger = logging.getLogger(__name__)

_RECV_BATCH = 256


def _fd(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.getsockopt(zmq.FD))


@dataclass(frozen=True, slots=True)
class Reply:
    status: str
    message: str
    payload: Frame | None  # serialized ModelInferResponse when status is OK


@dataclass
class BrokerLink:
    endpoint: str
    socket: zmq.Socket[bytes]
    liveness: Liveness  # starts dead: a broker is up once it said something
    catalog: CatalogHeader | None = None
    waiting: dict[int, int] = field(default_factory=dict)  # request id -> its flags
    incarnation: int = 0  # of the broker process last heard; a change means it restarted
    # Messages sent this event-loop turn, flushed as one BATCH: (frames, request id or 0).
    outbox: list[tuple[list[Frame], int]] = field(default_factory=list)
    # Models whose every worker shares our /dev/shm: large payloads go through it.
    shm_models: frozenset[str] = frozenset()


class FabricClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        heartbeat_interval_s: float,
        heartbeat_liveness: int,
        max_message_bytes: int,
        security: SocketSecurity | None = None,
        shm_transport: bool = False,
        broker_wait_s: float = 5.0,
    ) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # No identity of our own: the broker assigns one per connection, so nobody who learns
        # it (workers see it on every request) can claim it, and a rebuilt socket gets a new one.
        self._new_socket = partial(
            make_socket,
            self._ctx,
            zmq.DEALER,
            max_message_bytes=max_message_bytes,
            security=security,
        )
        self._links = [
            BrokerLink(
                ep,
                self._new_socket(),
                Liveness(heartbeat_interval_s, heartbeat_liveness, seen_at_start=False),
            )
            for ep in endpoints
        ]
        self._interval_s = heartbeat_interval_s
        self.gate = BrokerGate(broker_wait_s)  # holds calls while no worker is reachable
        self._shm_domain = domain_if(shm_transport)
        self._slabs = SlabPool(self._shm_domain) if self._shm_domain else None
        self._slab_of: dict[int, Slab] = {}  # request id -> the slab holding its payload
        self._ids = itertools.count(1)
        self._rr = itertools.count()
        self._futures: dict[int, tuple[asyncio.Future[Reply], BrokerLink]] = {}
        self._bad_log = RateLimitedLog(logger, "malformed or failing messages")
        self._controls: dict[int, asyncio.Future[ControlReplyHeader]] = {}
        # Decoupled requests: every response goes to the callback, the last with more=False.
        self._parts: dict[int, Callable[[Reply, bool], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._drain_scheduled = False
        self._flush_scheduled = False
        self.catalog_version = 0  # bumps whenever any broker's catalog or liveness changes
        # Routes reported to every broker on each heartbeat, and the brokers' decisions on them.
        self.routes = RouteStates()
        self.routes.on_report(self._send_heartbeats)

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.gate.start(self._loop)
        if self._slabs is not None and (swept := self._slabs.sweep()):
            logger.info("removed %d shared memory slab(s) of frontends that are gone", swept)
        for link in self._links:
            link.socket.connect(link.endpoint)
            self._loop.add_reader(_fd(link.socket), self._drain, link)
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="fabric-heartbeat")

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._flush_scheduled:  # send this turn's messages now: the callback finds no socket
            self._flush()
        for link in self._links:
            try:
                link.socket.send_multipart(messages.disconnect(), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            if self._loop is not None:
                self._loop.remove_reader(_fd(link.socket))
            link.socket.close(linger=100)
        for request_id in list(self._slab_of):
            self._release_slab(request_id, reuse=False)
        if self._slabs is not None:
            self._slabs.close()
        for fut, _ in self._futures.values():
            if not fut.done():
                fut.set_result(Reply(errors.UNAVAILABLE, "frontend is shutting down", None))
        self._futures.clear()
        self._ctx.term()

    # ---- requests -------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        version: str,
        deadline_ns: int,
        payload: Frame,
        flags: int = 0,
        hedge_of: int = 0,
        sequence: tuple[str, int] = ("", 0),
        on_part: Callable[[Reply, bool], None] | None = None,
        trace: str = "",
        shm: tuple[ShmRef, ...] = (),
    ) -> tuple[int, asyncio.Future[Reply], BrokerLink]:
        """Send one request; the future resolves with its reply. Raises RequestError at once
        when no broker can take it. ``sequence``: (correlation id, SEQUENCE_* flags), all of
        a sequence's requests go to one broker (it pins the sequence). ``on_part``: a
        decoupled request's callback, given every response (``more`` True) and the last."""
        if hedge_of:  # the hedge must reach the broker that knows the first copy's worker
            entry = self._futures.get(hedge_of)
            link = entry[1] if entry is not None else self._choose(model)
        elif sequence[0]:
            link = self._choose(model, zlib.crc32(sequence[0].encode()))
        else:
            link = self._choose(model)
        request_id = next(self._ids)
        header = RequestHeader(
            request_id, model, version, deadline_ns, trace, flags, hedge_of, *sequence, shm
        )
        if len(payload) >= SHM_MIN_BYTES and model in link.shm_models and self._slabs is not None:
            slab = self._slabs.acquire(payload)
            if slab is not None:  # else (/dev/shm full) it goes inline
                self._slab_of[request_id] = slab
                header.payload_shm, header.payload_size, payload = slab.name, len(payload), b""
        assert self._loop is not None
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._futures[request_id] = (fut, link)
        if on_part is not None:
            self._parts[request_id] = on_part
            fut.add_done_callback(partial(self._last_part, request_id))
        link.waiting[request_id] = flags
        self._enqueue(link, messages.request(header, payload), request_id)
        return request_id, fut, link

    async def control(
        self, op: str, model: str, version: str, timeout_s: float, body: bytes = b""
    ) -> list[ControlReplyHeader]:
        """Run a control operation on every worker behind every live broker."""
        assert self._loop is not None
        links = [link for link in self._links if link.liveness.alive()]
        if not links:
            raise RequestError(errors.UNAVAILABLE, "no broker is reachable")
        futures = []
        for link in links:
            request_id = next(self._ids)
            fut: asyncio.Future[ControlReplyHeader] = self._loop.create_future()
            self._controls[request_id] = fut
            futures.append((request_id, fut))
            header = ControlHeader(request_id, op, model, version, body)
            try:
                link.socket.send_multipart(messages.control(header), zmq.NOBLOCK)
            except zmq.Again:
                for rid, _ in futures:
                    self._controls.pop(rid, None)
                raise RequestError(
                    errors.UNAVAILABLE, f"broker {link.endpoint} cannot take requests"
                ) from None
            self._after_send(link)
        try:
            done, _ = await asyncio.wait([f for _, f in futures], timeout=timeout_s)
        finally:
            for request_id, _ in futures:
                self._controls.pop(request_id, None)
        if len(done) < len(futures):
            raise RequestError(errors.DEADLINE_EXCEEDED, f"'{op}' got no answer in time")
        return [f.result() for _, f in futures]

    def cancel(self, request_id: int) -> None:
        """Forget a request the caller gave up on and tell its broker to drop it."""
        entry = self._futures.pop(request_id, None)
        if entry is None:
            return
        fut, link = entry
        link.waiting.pop(request_id, None)
        self._release_slab(request_id, reuse=False)  # its worker may still write the slab
        if not fut.done():
            fut.cancel()
        self._enqueue(link, messages.cancel(request_id))

    def credit(self, request_id: int, responses: int) -> None:
        """The reader of a decoupled request took ``responses`` more of its responses."""
        entry = self._futures.get(request_id)
        if entry is not None:
            self._enqueue(entry[1], messages.credit(request_id, responses))

    def _last_part(self, request_id: int, fut: asyncio.Future[Reply]) -> None:
        on_part = self._parts.pop(request_id, None)
        if on_part is not None and not fut.cancelled():
            on_part(fut.result(), False)

    def _enqueue(self, link: BrokerLink, frames: list[Frame], request_id: int = 0) -> None:
        """Send at the end of this event-loop turn, together with whatever else is sent."""
        link.outbox.append((frames, request_id))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for link in self._links:
            if not link.outbox:
                continue
            items, link.outbox = link.outbox, []
            done = 0
            for frames, copy, sent in messages.outgoing([f for f, _ in items]):
                chunk = items[done : done + len(sent)]  # large requests go alone, zero-copy
                done += len(sent)
                try:
                    send_frames(link.socket, frames, copy)
                except zmq.ZMQError as exc:
                    # EAGAIN means a full queue, or (IMMEDIATE) no live connection at all:
                    # with far fewer requests waiting than the high-water mark, the latter.
                    full = len(link.waiting) >= DEFAULT_HWM // 2
                    if not full:
                        link.liveness.lost()  # choose another broker from now on
                        self.gate.check(self._links)  # or wait for one, if none is live
                    status = errors.RESOURCE_EXHAUSTED if full else errors.UNAVAILABLE
                    why = (
                        f"too many requests queued for broker {link.endpoint}"
                        if full
                        else f"broker {link.endpoint} is not connected ({exc})"
                    )
                    for _, request_id in chunk:
                        self._resolve(request_id, Reply(status, why, None))
            self._after_send(link)

    def _resolve(self, request_id: int, reply: Reply) -> None:
        entry = self._futures.pop(request_id, None)
        if entry is None:
            return
        fut, link = entry
        link.waiting.pop(request_id, None)
        self._release_slab(request_id, reuse=False)  # not sent, or sent to a lost broker
        if not fut.done():
            fut.set_result(reply)

    def _release_slab(self, request_id: int, reuse: bool) -> None:
        if self._slab_of:
            slab = self._slab_of.pop(request_id, None)
            if slab is not None and self._slabs is not None:
                self._slabs.release(slab, reuse)

    def _final_reply(self, header: ReplyHeader, payload: Sequence[Frame]) -> Reply:
        """The reply as callers see it (its payload copied out of the slab if it is there),
        and the request's slab given back for reuse."""
        slab = self._slab_of.pop(header.request_id, None) if self._slab_of else None
        reply = Reply(header.status, header.message, payload[0] if payload else None)
        if header.payload_in_slab:
            try:
                if slab is None or self._slabs is None:
                    raise RequestError(errors.INTERNAL, "a reply in a slab this request lacks")
                body = self._slabs.reply(slab, header.request_id, header.payload_in_slab)
                reply = Reply(header.status, header.message, body)
            except RequestError as exc:
                reply = Reply(exc.code, exc.message, None)
        if slab is not None and self._slabs is not None:
            self._slabs.release(slab, reuse=True)
        return reply

    def _choose(self, model: str, turn: int | None = None) -> BrokerLink:
        link = choose_broker(self._links, model, next(self._rr) if turn is None else turn)
        if link is None:
            raise RequestError(errors.UNAVAILABLE, "no broker is reachable")
        return link

    # ---- catalog --------------------------------------------------------------------------
    def live_catalogs(self) -> list[CatalogHeader]:
        return [
            link.catalog
            for link in self._links
            if link.catalog is not None and link.liveness.alive()
        ]

    def models(self) -> dict[tuple[str, str], tuple[CatalogEntry, int]]:
        """(name, version) -> (an entry holding its config, live workers across brokers)."""
        out: dict[tuple[str, str], tuple[CatalogEntry, int]] = {}
        for catalog in self.live_catalogs():
            for e in catalog.models:
                prev = out.get((e.name, e.version))
                out[(e.name, e.version)] = (e, e.workers + (prev[1] if prev else 0))
        return out

    def workers(self) -> int:
        return sum(c.workers for c in self.live_catalogs())

    # ---- socket I/O -----------------------------------------------------------------------
    def _after_send(self, link: BrokerLink) -> None:
        # A send can consume the edge that would have woken the reader: look again soon.
        if not self._drain_scheduled and readable(link.socket):
            self._drain_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain_all)

    def _drain_all(self) -> None:
        self._drain_scheduled = False
        for link in self._links:
            self._drain(link)

    def _drain(self, link: BrokerLink) -> None:
        sock = link.socket
        handle = partial(self._handle, link)
        while True:
            for _ in range(_RECV_BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    return
                except zmq.ZMQError:
                    return  # socket closed during shutdown
                link.liveness.seen()
                messages.handle_each(
                    messages.iter_messages(frames, routed=False),
                    handle,
                    self._bad_log,
                    link.endpoint,
                )
            if not readable(sock):
                return

    def _handle(self, link: BrokerLink, msg: Message) -> None:
        match msg.header:
            case ReplyHeader() as header:
                if header.more:  # one of a decoupled request's responses; more follow
                    on_part = self._parts.get(header.request_id)
                    if on_part is not None and msg.payload:
                        on_part(Reply(header.status, header.message, msg.payload[0]), True)
                    return
                entry = self._futures.pop(header.request_id, None)
                if entry is None:
                    return  # cancelled or timed out already
                fut, owner = entry
                owner.waiting.pop(header.request_id, None)
                reply = self._final_reply(header, msg.payload)
                if not fut.done():
                    fut.set_result(reply)
            case ControlReplyHeader() as control:
                waiter = self._controls.pop(control.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(control)
            case CatalogHeader() as catalog:
                self._check_incarnation(link, catalog.incarnation)
                link.catalog = catalog
                link.shm_models = shm_models(catalog, self._shm_domain)
                self.catalog_version += 1
                self.gate.check(self._links)  # opens once a live broker lists a worker
            case HeartbeatHeader() as heartbeat:
                self._check_incarnation(link, heartbeat.incarnation)
                self.routes.update(link.endpoint, heartbeat.decisions)
            case _:
                raise MalformedMessage(f"unexpected {msg.type.name} from a broker")

    async def _heartbeat(self) -> None:
        was_alive = {id(link): False for link in self._links}
        while True:
            for link in self._links:
                alive = link.liveness.alive()
                if was_alive[id(link)] and not alive:
                    self._broker_lost(link)
                    self._rebuild(link)
                if alive != was_alive[id(link)]:
                    self.catalog_version += 1
                    logger.info("broker %s is %s", link.endpoint, "up" if alive else "down")
                was_alive[id(link)] = alive
                self._send_heartbeat(link, alive)
            self.gate.check(self._links)
            await asyncio.sleep(self._interval_s)

    def _send_heartbeat(self, link: BrokerLink, alive: bool) -> None:
        generation = link.catalog.generation if link.catalog and alive else 0
        routes = self.routes
        header = HeartbeatHeader(generation, routes=routes.specs, decisions=routes.held())
        try:
            link.socket.send_multipart(messages.heartbeat(header), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not connected yet; liveness will tell
        self._after_send(link)

    def _send_heartbeats(self) -> None:
        """Heartbeat every broker now: the routes changed, and their decisions are wanted."""
        if self._loop is not None:  # before start, the first heartbeats carry them
            for link in self._links:
                self._send_heartbeat(link, link.liveness.alive())

    def _rebuild(self, link: BrokerLink) -> None:
        """A fresh socket to a broker that went silent: whatever stopped it reading the old
        connection (a half-open TCP connection, a peer in our place) is left behind."""
        if self._loop is not None:
            self._loop.remove_reader(_fd(link.socket))
        link.socket.close(linger=0)
        link.socket = self._new_socket()
        link.socket.connect(link.endpoint)
        link.outbox.clear()  # their requests were failed by _broker_lost
        if self._loop is not None:
            self._loop.add_reader(_fd(link.socket), self._drain, link)
        logger.info("broker %s: connection rebuilt", link.endpoint)

    def _check_incarnation(self, link: BrokerLink, incarnation: int) -> None:
        if link.incarnation and incarnation and incarnation != link.incarnation:
            # A new broker process on the same endpoint: what the old one held is gone.
            self._broker_lost(link, "restarted")
        link.incarnation = incarnation

    def _broker_lost(self, link: BrokerLink, why: str = "went silent") -> None:
        logger.warning(
            "broker %s %s; failing %d waiting requests", link.endpoint, why, len(link.waiting)
        )
        link.catalog = None
        self.routes.broker_lost(link.endpoint)
        for request_id, flags in list(link.waiting.items()):
            entry = self._futures.pop(request_id, None)
            if entry is None or entry[0].done():
                continue
            if flags & FLAG_NON_IDEMPOTENT:  # it may have run: must not be retried
                reply = Reply(
                    errors.ABORTED, f"broker {link.endpoint} {why}; the request may have run", None
                )
            else:
                reply = Reply(errors.UNAVAILABLE, f"broker {link.endpoint} {why}", None)
            entry[0].set_result(reply)
        link.waiting.clear()
