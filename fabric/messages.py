"""Builders and the one reader of the wire messages in ``fabric.protocol``'s table.

Tiers never build or index protocol frames: they call one builder per message kind, which
returns the frames a DEALER sends (a ROUTER puts the peer identity in front), and read what
arrives with ``iter_messages``, which checks the tag, unpacks BATCH, decodes each header and
yields a ``Message`` (or, for input that breaks the protocol, a ``MalformedMessage`` to log
and drop, so that one bad message in a BATCH never costs the others).

Hot path: type frames are precomputed, payload frames are passed through (never copied),
and a forwarded header travels as the frame it arrived in (``header`` accepts either a
header struct or its encoded frame). Builders that worker compute threads call (``reply``,
``ack``, ``control_reply``) encode with the thread-safe ``msgspec.msgpack.encode``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import msgspec

from .protocol import (
    HEADER_TYPES,
    LARGE_TAG,
    PROTOCOL_TAG,
    TYPE_FRAME,
    AckHeader,
    CancelHeader,
    CatalogHeader,
    ControlHeader,
    ControlReplyHeader,
    CreditHeader,
    DisconnectHeader,
    Frame,
    HeartbeatHeader,
    MalformedMessage,
    ModelAnnouncement,
    MsgType,
    Outgoing,
    PeerId,
    ReadyHeader,
    ReannounceHeader,
    ReplyHeader,
    RequestHeader,
    RequestId,
    coalesce,
    encode_header,
    outgoing,
    unpack_batch,
)
from .ratelog import RateLimitedLog

__all__ = [
    "Header",
    "MalformedMessage",
    "Message",
    "Outgoing",
    "ack",
    "cancel",
    "catalog",
    "coalesce",
    "control",
    "control_reply",
    "credit",
    "disconnect",
    "heartbeat",
    "is_request",
    "iter_messages",
    "outgoing",
    "ready",
    "reannounce",
    "reply",
    "request",
]

Header: TypeAlias = (
    RequestHeader
    | ReplyHeader
    | CancelHeader
    | AckHeader
    | ReadyHeader
    | ReannounceHeader
    | CatalogHeader
    | HeartbeatHeader
    | DisconnectHeader
    | ControlHeader
    | ControlReplyHeader
    | CreditHeader
)

_TAG = PROTOCOL_TAG
_REQUEST = TYPE_FRAME[MsgType.REQUEST]
_REPLY = TYPE_FRAME[MsgType.REPLY]
_CANCEL = TYPE_FRAME[MsgType.CANCEL]
_ACK = TYPE_FRAME[MsgType.ACK]
_READY = TYPE_FRAME[MsgType.READY]
_REANNOUNCE = TYPE_FRAME[MsgType.REANNOUNCE]
_CATALOG = TYPE_FRAME[MsgType.CATALOG]
_HEARTBEAT = TYPE_FRAME[MsgType.HEARTBEAT]
_DISCONNECT = TYPE_FRAME[MsgType.DISCONNECT]
_CONTROL = TYPE_FRAME[MsgType.CONTROL]
_CONTROL_REPLY = TYPE_FRAME[MsgType.CONTROL_REPLY]
_BATCH = TYPE_FRAME[MsgType.BATCH]
_CREDIT = TYPE_FRAME[MsgType.CREDIT]

_DISCONNECT_HEADER = encode_header(DisconnectHeader())
_REANNOUNCE_HEADER = encode_header(ReannounceHeader())
_EMPTY_HEARTBEAT = encode_header(HeartbeatHeader())


def _frame(header: msgspec.Struct | Frame) -> Frame:
    return header if isinstance(header, bytes | memoryview) else encode_header(header)


# ---- builders: one per message kind -----------------------------------------------------
# ``frontend`` is given on the broker↔worker link only (see the wire table).


def request(
    header: RequestHeader | Frame, payload: Frame, frontend: PeerId | None = None
) -> list[Frame]:
    """F→B ``[tag, REQUEST, header, payload]``; B→W ``[tag, REQUEST, header, frontend,
    payload]``."""
    head = header if type(header) is bytes else _frame(header)  # forwarded: no call
    if frontend is None:
        return [_TAG, _REQUEST, head, payload]
    return [_TAG, _REQUEST, head, frontend, payload]


def reply(
    header: ReplyHeader | Frame,
    body: Sequence[Frame] = (),
    frontend: PeerId | None = None,
) -> list[Frame]:
    """W→B ``[tag, REPLY, header, frontend, body?]``; B→F ``[tag, REPLY, header, body?]``."""
    if type(header) is bytes or isinstance(header, memoryview):
        head: Frame = header
    else:
        head = msgspec.msgpack.encode(header)
    if frontend is None:
        return [_TAG, _REPLY, head, *body]
    return [_TAG, _REPLY, head, frontend, *body]


def cancel(request_id: RequestId, frontend: PeerId | None = None) -> list[Frame]:
    """F→B ``[tag, CANCEL, header]``; B→W ``[tag, CANCEL, header, frontend]``."""
    head = encode_header(CancelHeader(request_id))
    return [_TAG, _CANCEL, head] if frontend is None else [_TAG, _CANCEL, head, frontend]


def ack(request_id: RequestId, frontend: PeerId) -> list[Frame]:
    """W→B ``[tag, ACK, header, frontend]``: the request is in a batch now."""
    return [_TAG, _ACK, msgspec.msgpack.encode(AckHeader(request_id)), frontend]


def ready(models: list[ModelAnnouncement]) -> list[Frame]:
    """W→B ``[tag, READY, header]``: every model version the worker serves now."""
    return [_TAG, _READY, encode_header(ReadyHeader(models))]


def reannounce() -> list[Frame]:
    """B→W ``[tag, REANNOUNCE, header]``: the broker does not know this worker."""
    return [_TAG, _REANNOUNCE, _REANNOUNCE_HEADER]


def catalog(header: CatalogHeader | Frame) -> list[Frame]:
    """B→F ``[tag, CATALOG, header]``; an encoded header may be shared by many frontends."""
    return [_TAG, _CATALOG, _frame(header)]


def heartbeat(header: HeartbeatHeader | Frame | None = None) -> list[Frame]:
    """Any direction ``[tag, HEARTBEAT, header]``; an encoded header may be shared."""
    return [_TAG, _HEARTBEAT, _EMPTY_HEARTBEAT if header is None else _frame(header)]


def disconnect() -> list[Frame]:
    """F→B, W→B ``[tag, DISCONNECT, header]``: the sender leaves on purpose."""
    return [_TAG, _DISCONNECT, _DISCONNECT_HEADER]


def control(header: ControlHeader | Frame, frontend: PeerId | None = None) -> list[Frame]:
    """F→B ``[tag, CONTROL, header]``; B→W ``[tag, CONTROL, header, frontend]``."""
    head = _frame(header)
    return [_TAG, _CONTROL, head] if frontend is None else [_TAG, _CONTROL, head, frontend]


def control_reply(header: ControlReplyHeader, frontend: PeerId | None = None) -> list[Frame]:
    """W→B ``[tag, CONTROL_REPLY, header, frontend]``; B→F ``[tag, CONTROL_REPLY, header]``."""
    head = msgspec.msgpack.encode(header)
    if frontend is None:
        return [_TAG, _CONTROL_REPLY, head]
    return [_TAG, _CONTROL_REPLY, head, frontend]


def credit(request_id: RequestId, responses: int, frontend: PeerId | None = None) -> list[Frame]:
    """F→B ``[tag, CREDIT, header]``; B→W ``[tag, CREDIT, header, frontend]``: the reader of a
    decoupled request took ``responses`` more of its responses."""
    head = encode_header(CreditHeader(request_id, responses))
    return [_TAG, _CREDIT, head] if frontend is None else [_TAG, _CREDIT, head, frontend]


def is_request(frames: Sequence[Frame]) -> bool:
    """Whether built ``frames`` are a REQUEST (what an undeliverable send must give back)."""
    return len(frames) > 1 and frames[1] == _REQUEST


def ready_header_bytes(frames: Sequence[Frame], at: int = 0) -> int:
    """The header size of a lone READY whose tag is ``frames[at]`` (0 for any other message),
    known without decoding it: a receiver may refuse megabytes of configs unread."""
    if len(frames) > at + 2 and frames[at + 1] == _READY:
        return len(frames[at + 2])
    return 0


# ---- the reader ---------------------------------------------------------------------------


class Message(msgspec.Struct, gc=False, frozen=True):
    """One received message. ``route`` is the frontend identity that per-request messages
    carry on the broker↔worker link (``b""`` elsewhere); ``payload`` the frames after it.
    A Struct: built in C, one per message on the hot path."""

    type: MsgType
    header: Any
    header_frame: Frame
    route: PeerId
    payload: Sequence[Frame]

    def __repr__(self) -> str:
        return f"Message({self.type.name}, {self.header!r}, route={self.route!r})"


_ROUTED = frozenset(
    {
        MsgType.REQUEST,
        MsgType.REPLY,
        MsgType.CANCEL,
        MsgType.ACK,
        MsgType.CONTROL,
        MsgType.CONTROL_REPLY,
        MsgType.CREDIT,
    }
)
# Payload frames (after any route) each type may carry: (fewest, most).
_PAYLOAD_FRAMES: dict[MsgType, tuple[int, int]] = {t: (0, 0) for t in MsgType}
_PAYLOAD_FRAMES[MsgType.REQUEST] = (1, 1)
_PAYLOAD_FRAMES[MsgType.REPLY] = (0, 1)

_Layout: TypeAlias = tuple[MsgType, "msgspec.msgpack.Decoder[Any]", bool, int, int]
# Everything the reader needs per type frame, in one lookup keyed by the frame itself
# (hashing bytes is cheap, hashing an enum member is a Python call).
_LAYOUTS: dict[bytes, _Layout] = {
    TYPE_FRAME[t]: (t, msgspec.msgpack.Decoder(h), t in _ROUTED, *_PAYLOAD_FRAMES[t])
    for t, h in HEADER_TYPES.items()
}


def iter_messages(frames: Sequence[Frame], *, routed: bool) -> Iterator[Message | MalformedMessage]:
    """Every message in ``frames`` (one ZeroMQ message without any routing identity), BATCH
    unpacked. ``routed``: read on the broker↔worker link, where per-request messages carry
    the frontend identity. Malformed input is yielded as ``MalformedMessage``, never raised."""
    if len(frames) < 3 or (frames[0] != _TAG and frames[0] != LARGE_TAG):
        yield MalformedMessage(f"bad protocol tag or too few frames ({len(frames)})")
        return
    if frames[1] != _BATCH:
        yield _read(frames, 1, routed)
        return
    if len(frames) != 3:
        yield MalformedMessage("BATCH with frames after its body", "batch")
        return
    try:
        batch = unpack_batch(frames[2])
    except MalformedMessage as exc:
        yield exc
        return
    for sub in batch:
        yield _read(sub, 0, routed)


def _read(frames: Sequence[Frame], at: int, routed: bool) -> Message | MalformedMessage:
    """The message whose type frame is ``frames[at]`` (the hot path: keep it lean)."""
    key = frames[at]
    layout = _LAYOUTS.get(key if type(key) is bytes else bytes(key))
    if layout is None:
        if key == _BATCH:
            return MalformedMessage("nested BATCH", "batch")
        return MalformedMessage(f"unknown message type {bytes(key)[:8]!r}", "unknown_type")
    msg_type, decoder, takes_route, fewest, most = layout
    header_frame = frames[at + 1]
    try:
        header = decoder.decode(header_frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return MalformedMessage(f"bad {msg_type.name} header: {exc}", msg_type.name.lower())
    first = at + 2
    route = b""
    if routed and takes_route:
        if len(frames) <= first:
            return MalformedMessage(
                f"{msg_type.name} without frontend identity", msg_type.name.lower()
            )
        frame = frames[first]
        route = frame if type(frame) is bytes else bytes(frame)
        first += 1
    count = len(frames) - first
    if count < fewest or count > most:
        return MalformedMessage(
            f"{msg_type.name} with {count} payload frames ({fewest}..{most})",
            msg_type.name.lower(),
        )
    return Message(msg_type, header, header_frame, route, frames[first:])


def handle_each(
    read: Iterable[Message | MalformedMessage],
    handle: Callable[[Message], None],
    log: RateLimitedLog,
    peer: str,
) -> None:
    """Hand every message ``read`` yields to ``handle``; one that is malformed, or whose
    handler raised, is logged (at a bounded rate: peers cause these at will) and dropped, and
    the others go on."""
    for msg in read:
        try:
            if isinstance(msg, MalformedMessage):
                raise msg
            handle(msg)
        except MalformedMessage as exc:
            log.warning(peer, "dropped malformed message from %s: %s", peer, exc)
        except Exception:
            log.log(logging.ERROR, peer, "error handling a message from %s", peer, exc_info=True)
