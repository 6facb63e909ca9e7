"""The one factory for ZeroMQ sockets: finite high-water marks, explicit linger, no surprises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import zmq

DEFAULT_HWM = 100_000
"""Messages queued per peer before sends fail with EAGAIN (then we answer RESOURCE_EXHAUSTED)."""
DEFAULT_LINGER_MS = 0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ZERO_COPY_MIN_BYTES = 256 * 1024
"""Below this a copying send is cheaper: zero-copy frames wake pyzmq's garbage-collector thread
once per frame when libzmq releases them."""


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


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """``sock.recv_multipart(zmq.NOBLOCK)``, cheaper; raises ``zmq.Again`` when none waits."""
    frames: list[bytes] = [_backend_recv(sock, _NOBLOCK)]
    while _backend_get(sock, _RCVMORE):
        frames.append(_backend_recv(sock, _NOBLOCK))
    return frames


class SocketSecurity(Protocol):
    def apply(self, sock: zmq.Socket[bytes]) -> None: ...


def make_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    *,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
    identity: bytes | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    security: SocketSecurity | None = None,
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
        # Peers keep their identity across reconnects (a worker after SIGCONT, a frontend after
        # a network blip): the new connection takes the identity over at once instead of being
        # ignored until the old one is torn down.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
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
