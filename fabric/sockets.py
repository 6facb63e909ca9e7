"""The one factory for ZeroMQ sockets: finite high-water marks, explicit linger, no surprises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import zmq

from .protocol import LARGE_PAYLOAD_BYTES, LARGE_TAG

DEFAULT_HWM = 100_000
"""Messages queued per peer before sends fail with EAGAIN (then we answer RESOURCE_EXHAUSTED)."""
DEFAULT_LINGER_MS = 0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default of the one message size limit all tiers share (``--max-message-bytes``, environment
``FABRIC_MAX_MESSAGE_BYTES``): the largest gRPC request or response a frontend takes or sends,
and the largest request or reply a worker sends on the fabric."""
MESSAGE_SLACK_BYTES = 64 * 1024
"""ZeroMQ sockets take this much more than the limit: headers and identities around a payload
(a message past a socket's ``ZMQ_MAXMSGSIZE`` costs the whole connection, not one request)."""
ZERO_COPY_MIN_BYTES = LARGE_PAYLOAD_BYTES


def should_copy(frames: Sequence[bytes | memoryview]) -> bool:
    return sum(len(f) for f in frames) < ZERO_COPY_MIN_BYTES


# The hot path talks to pyzmq's Cython socket methods directly. ``Socket.send_multipart`` and
# ``recv_multipart`` add Python layers per frame (type checks, routing-id handling, and flag
# arithmetic on ``enum.Flag`` members): ~11 us against ~1 us for a 4-frame send here. Even the
# public ``Socket.send`` per frame costs ~50% more than these (10.6 vs 15.9 us per 4-frame send
# with its libzmq work, on a busy 2-core host). ``zmq.backend.Socket`` is not a documented API,
# so pyproject pins pyzmq to the majors tested (25-27); test_sockets covers these paths.
_backend_send: Callable[..., object] = zmq.backend.Socket.send
_backend_recv: Callable[..., bytes] = zmq.backend.Socket.recv
_backend_get: Callable[..., int | bytes] = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_frames(
    sock: zmq.Socket[bytes], frames: Sequence[bytes | memoryview], copy: bool = True
) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)``, cheaper; raises the same
    (``zmq.Again`` when the message cannot be queued: ZeroMQ takes a multipart message whole
    or not at all, deciding on its first frame)."""
    for f in frames:  # all or nothing: a bad frame found mid-message would leave half of it
        if not isinstance(f, bytes | memoryview | zmq.Frame):
            raise TypeError(f"frame of type {type(f).__name__} is not bytes")
    last = len(frames) - 1
    for i in range(last):
        _backend_send(sock, frames[i], _MORE_NOBLOCK, copy)
    _backend_send(sock, frames[last], _NOBLOCK, copy)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes | memoryview]:
    """``sock.recv_multipart(zmq.NOBLOCK)``, cheaper; raises ``zmq.Again`` when none waits.

    After a ``LARGE_TAG`` frame the rest are received in place: frames of
    ``LARGE_PAYLOAD_BYTES`` or more come back as writable memoryviews of ZeroMQ's own buffer
    (kept alive by the view), smaller ones as bytes."""
    frame = _backend_recv(sock, _NOBLOCK)
    frames: list[bytes | memoryview] = [frame]
    while _backend_get(sock, _RCVMORE):
        if frame == LARGE_TAG:
            _recv_in_place(sock, frames)
            break
        frame = _backend_recv(sock, _NOBLOCK)
        frames.append(frame)
    return frames


def _recv_in_place(sock: zmq.Socket[bytes], frames: list[bytes | memoryview]) -> None:
    more = True
    while more:
        msg: zmq.Frame = _backend_recv(sock, _NOBLOCK, False)  # type: ignore[assignment]
        frames.append(msg.buffer if len(msg) >= LARGE_PAYLOAD_BYTES else msg.bytes)
        more = bool(_backend_get(sock, _RCVMORE))


class SocketSecurity(Protocol):
    def apply(self, sock: zmq.Socket[bytes]) -> None: ...


def make_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    *,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
    identity: bytes | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES + MESSAGE_SLACK_BYTES,
    security: SocketSecurity | None = None,
    handover: bool = False,
) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    if security is not None:  # before bind/connect: CURVE applies to the handshake
        security.apply(sock)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        # Unroutable messages raise EHOSTUNREACH instead of vanishing; callers catch it.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # ``handover``: a peer reconnecting with its identity (a worker after SIGCONT) takes
        # it over at once instead of being ignored until the old connection is torn down.
        # Only where every peer is trusted alike (the worker port): elsewhere a peer that
        # learnt another's identity could take its traffic over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, int(handover))
    if kind == zmq.DEALER:
        # Reconnect quickly after a broker restart; messages for a peer that is not
        # connected yet wait instead of going nowhere.
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock


def readable(sock: zmq.Socket[bytes]) -> bool:
    """A message waits on ``sock`` (``ZMQ_EVENTS`` has ``POLLIN``)."""
    return bool(int(_backend_get(sock, _EVENTS)) & _POLLIN)
