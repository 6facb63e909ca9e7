"""The one factory for ZeroMQ sockets: finite high-water marks, explicit linger, no surprises."""

from __future__ import annotations

from collections.abc import Sequence
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
