"""The worker's in-process sub-protocol: its compute and control threads → its I/O loop.

Those threads never touch a broker socket; they hand messages to the I/O loop over an inproc
PUSH/PULL pair. A request's *route* is the index of the broker link it came through (one
byte) followed by the frontend identity, so that its reply leaves through the same broker.
Inproc messages (one ZeroMQ message each):

| frames                                  | meaning                                           |
|-----------------------------------------|---------------------------------------------------|
| [link byte, *wire message]              | send the wire message (``fabric.messages``) to link|
| [b"group", msgpack list of the above]   | several of those, from one flush of one thread    |
|                                         | (never one with a large body: see ``groups``)     |
| [b"announce"]                           | the served models changed: send READY to brokers  |
| [b"wake"]                               | nothing to send; look at the inline instances     |

The link byte frame is one byte long, the signal frames longer, so they never collide.
``ReplyBuffer`` collects what each thread builds until that thread's next flush.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator, Sequence
from typing import TypeAlias

import msgspec

from . import messages
from .protocol import (
    LARGE_PAYLOAD_BYTES,
    LARGE_TAG,
    ControlReplyHeader,
    Frame,
    MalformedMessage,
    PeerId,
    ReplyHeader,
    RequestId,
)

Route: TypeAlias = bytes
"""Broker link index (one byte), then the frontend identity."""

_GROUP = b"group"
_ANNOUNCE = b"announce"
_WAKE = b"wake"
_group_decoder = msgspec.msgpack.Decoder(list[list[bytes]])


class Signal(enum.Enum):
    ANNOUNCE = "announce"
    WAKE = "wake"


Outbound: TypeAlias = tuple[int, list[Frame]]
"""(broker link index, wire message frames)."""


def route(link_index: int, frontend: PeerId) -> Route:
    return bytes([link_index]) + frontend


# ---- builders -------------------------------------------------------------------------------


def reply(
    to: Route,
    request_id: RequestId,
    status: str,
    message: str,
    body: bytes | None,
    more: bool = False,
    payload_in_slab: int = 0,
) -> list[Frame]:
    """``[link, tag, REPLY, header, frontend, body?]``."""
    header = ReplyHeader(request_id, status, message, more, payload_in_slab)
    return [to[:1], *messages.reply(header, () if body is None else (body,), to[1:])]


def ack(to: Route, request_id: RequestId) -> list[Frame]:
    """``[link, tag, ACK, header, frontend]``."""
    return [to[:1], *messages.ack(request_id, to[1:])]


def control_reply(to: Route, header: ControlReplyHeader) -> list[Frame]:
    """``[link, tag, CONTROL_REPLY, header, frontend]``."""
    return [to[:1], *messages.control_reply(header, to[1:])]


def group(items: Sequence[Sequence[Frame]]) -> list[Frame]:
    """One inproc message for several built ones; a lone one is sent as itself."""
    if len(items) == 1:
        return list(items[0])
    return [_GROUP, msgspec.msgpack.encode(items)]


def groups(items: Sequence[Sequence[Frame]]) -> list[tuple[list[Frame], bool]]:
    """Inproc messages, with their copy flag, for built ones in their order: runs of small ones
    grouped, each large one alone and zero-copy under ``LARGE_TAG`` (so that the I/O loop
    receives its body in place; in a group it would be copied twice through msgpack)."""
    if len(items) == 1 and len(items[0][-1]) < LARGE_PAYLOAD_BYTES:
        return [(list(items[0]), True)]
    out: list[tuple[list[Frame], bool]] = []
    start = 0
    for i, item in enumerate(items):
        if len(item[-1]) < LARGE_PAYLOAD_BYTES:
            continue
        if start < i:
            out.append((group(items[start:i]), True))
        out.append(([item[0], LARGE_TAG, *item[2:]], False))
        start = i + 1
    if start < len(items):
        out.append((group(items[start:]), True))
    return out


def announce() -> list[Frame]:
    return [_ANNOUNCE]


def wake() -> list[Frame]:
    return [_WAKE]


# ---- reader ---------------------------------------------------------------------------------


def outbound(frames: Sequence[Frame]) -> Outbound:
    """Link index and wire frames of one built outbound message (a new list: ``frames`` is
    left as it is)."""
    if len(frames) < 4 or len(frames[0]) != 1:
        raise MalformedMessage(f"inproc message without link byte ({len(frames)} frames)")
    rest = frames[1:]
    return frames[0][0], rest if isinstance(rest, list) else list(rest)


def iter_inproc(frames: Sequence[Frame]) -> Iterator[Outbound | Signal]:
    """What one received inproc message asks for, groups unpacked. Raises MalformedMessage
    (only a bug in this process can cause one)."""
    kind = frames[0]
    if len(kind) == 1:
        yield outbound(frames)
    elif kind == _WAKE:
        yield Signal.WAKE
    elif kind == _ANNOUNCE:
        yield Signal.ANNOUNCE
    elif kind == _GROUP and len(frames) == 2:
        try:
            items = _group_decoder.decode(frames[1])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedMessage(f"bad inproc group: {exc}") from exc
        for item in items:
            yield outbound(item)
    else:
        raise MalformedMessage(f"unknown inproc message {bytes(kind)!r}")


class ReplyBuffer:
    """Outbound messages (built by the functions above) waiting for a flush, one queue per
    thread.

    Each thread ``add``s to its own queue and ``take`` hands the calling thread what it alone
    added, in its order. The owner (the worker server) sends what a thread takes on that
    thread's own inproc socket (or, on the I/O thread, straight to the brokers), so messages
    built on one thread reach the brokers in the order they were built: a decoupled request's
    responses, all built on the thread running it, stay in order. A shared queue lost that
    order: a message taken by another thread's flush went out on that thread's socket, and
    the I/O loop's PULL fair-queues between sockets, so a later response could overtake it.
    The buffer never changes a message.
    """

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local = threading.local()

    def _items(self) -> list[list[Frame]]:
        items: list[list[Frame]] | None = getattr(self._local, "items", None)
        if items is None:
            items = self._local.items = []
        return items

    def add(self, message: list[Frame]) -> None:
        self._items().append(message)

    def take(self) -> list[list[Frame]]:
        """What the calling thread added since its last ``take``, oldest first."""
        items = self._items()
        if not items:
            return []
        self._local.items = []
        return items

    def __len__(self) -> int:
        """Messages the calling thread added and has not taken."""
        return len(self._items())
