"""The wire protocol between frontends, brokers and workers: frames, message types, headers.

Every message is a ZeroMQ multipart message. What a DEALER sends (a ROUTER sees the
peer identity prepended as frame 0):

| frame | content                                                             |
|-------|---------------------------------------------------------------------|
| 0     | ``PROTOCOL_TAG`` (``b"FAB2"``): rejects peers speaking another version|
|       | or ``LARGE_TAG`` (``b"FAB2L"``): the same, payload received in place  |
| 1     | message type, one byte (``MsgType``)                                |
| 2     | header: msgpack of the type's header struct (array-like)            |
| 3..   | payload frames, opaque to every tier but the one that made them     |

Per type (F = frontend, B = broker, W = worker):

| type       | direction    | header            | frames after the header                 |
|------------|--------------|-------------------|-----------------------------------------|
| REQUEST    | F→B          | RequestHeader     | [ModelInferRequest bytes]               |
| REQUEST    | B→W          | RequestHeader     | [frontend identity, ModelInferRequest]  |
| REPLY      | W→B          | ReplyHeader       | [frontend identity, ModelInferResponse?]|
| REPLY      | B→F          | ReplyHeader       | [ModelInferResponse?] (only when OK)    |
| CANCEL     | F→B          | CancelHeader      | []                                      |
| CANCEL     | B→W          | CancelHeader      | [frontend identity]                     |
| ACK        | W→B          | AckHeader         | [frontend identity] (accepted in batch) |
| READY      | W→B          | ReadyHeader       | [] (full model state, sent on change)   |
| REANNOUNCE | B→W          | ReannounceHeader  | [] (unknown worker: send READY again)   |
| CATALOG    | B→F          | CatalogHeader     | [] (sent on change or when asked)       |
| HEARTBEAT  | any          | HeartbeatHeader   | [] (F↔B: routes and their decisions)    |
| DISCONNECT | F→B, W→B     | DisconnectHeader  | [] (graceful leave)                     |
| CONTROL    | F→B          | ControlHeader     | []                                      |
| CONTROL    | B→W          | ControlHeader     | [frontend identity]                     |
| CONTROL_REPLY | W→B       | ControlReplyHeader| [frontend identity]                     |
| CONTROL_REPLY | B→F       | ControlReplyHeader| [] (one body per worker that answered)  |
| CREDIT     | F→B          | CreditHeader      | [] (a decoupled stream's reader took more)|
| CREDIT     | B→W          | CreditHeader      | [frontend identity]                     |

On the broker↔worker link every per-request message (REQUEST, REPLY, CANCEL, ACK, CONTROL,
CONTROL_REPLY, CREDIT) carries the frontend identity right after the header, so that the broker
knows whose request it is; on the frontend↔broker link none does. Each message type has a
header type of its own, so a reader can tell messages apart by their header's class.

BATCH (any direction) carries several messages for the same peer in one ZeroMQ message:
``[PROTOCOL_TAG, BATCH, body]`` where body is msgpack of a list of messages, each the list
of its frames after the tag (``[type, header, *payload]``). Under load each tier coalesces
what it has for a peer per wake-up, so a ZeroMQ send (and the wake-ups behind it) serves
many requests; a lone message is sent as itself.

Large messages (last frame of ``LARGE_PAYLOAD_BYTES`` or more) are never coalesced: each goes
alone, zero-copy, with ``LARGE_TAG`` as frame 0, which tells the receiver to take the frames
after it without copying them out of ZeroMQ (``fabric.sockets.recv_frames``), so a tensor
crosses the broker as the same memory it arrived in. ``outgoing`` makes that choice, in order.

CONTROL carries repository and statistics operations (``op``: "statistics", "load",
"unload", "index"); a load's ``body`` is the client's serialized RepositoryModelLoadRequest
(its config override and files); the broker fans it out to every live worker and answers the
frontend once all of them replied or the control timeout passed.

A decoupled model answers one request with several REPLYs: each but the last has ``more``
set, and the broker holds the lease until the last. The worker sends at most
``DECOUPLED_WINDOW`` responses beyond those the frontend's reader took; CREDIT grants more.
A sequence request names its correlation id in ``sequence`` (``SEQUENCE_*`` flags): the
broker pins the sequence to one worker while it lives (``broker.sequences``).

Requests are keyed by (frontend identity, request id): ids are unique per frontend only.
Deadlines are absolute wall-clock nanoseconds (``time.time_ns()``), 0 meaning none, so that
they mean the same in every process; each tier converts them to its monotonic clock.
Status codes are gRPC status names (``"INVALID_ARGUMENT"``) so no tier needs grpc to say one.

This module defines the frames; ``fabric.messages`` builds and reads them (tiers use only
that), and ``fabric.inproc`` carries the worker's messages between its own threads.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import NamedTuple, TypeAlias

import msgspec

from .routes import RouteDecision, RouteSpec

logger = logging.getLogger(__name__)

PROTOCOL_TAG = b"FAB2"
LARGE_TAG = b"FAB2L"
LARGE_PAYLOAD_BYTES = 256 * 1024
"""From this size on a payload travels zero-copy. Below it a copying send is cheaper: zero-copy
frames wake pyzmq's garbage-collector thread once per frame when libzmq releases them, and a
zero-copy receive costs ~2 us more per frame than a copying one."""
BATCH_MAX_BYTES = 4 * 1024 * 1024
"""Payload bytes coalesced into one BATCH at most (each under ``LARGE_PAYLOAD_BYTES``)."""

RequestId: TypeAlias = int
PeerId: TypeAlias = bytes
Frame: TypeAlias = bytes | memoryview


class MsgType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    CANCEL = 3
    READY = 4
    CATALOG = 5
    HEARTBEAT = 6
    DISCONNECT = 7
    ACK = 8
    CONTROL = 9
    CONTROL_REPLY = 10
    BATCH = 11
    REANNOUNCE = 12
    CREDIT = 13


# Single-byte frames, precomputed so the hot path never builds them.
TYPE_FRAME: dict[MsgType, bytes] = {t: bytes([t]) for t in MsgType}
FRAME_TYPE: dict[bytes, MsgType] = {v: k for k, v in TYPE_FRAME.items()}

FLAG_NON_IDEMPOTENT = 1
"""The model must not run twice: never requeue a request that a worker may have started."""

SEQUENCE_START = 1
"""``RequestHeader.sequence_flags``: the request starts its sequence (Triton's START)."""
SEQUENCE_END = 2
"""The request ends its sequence (Triton's END): the pin is released once it is sent."""
SEQUENCE_STRING_ID = 4
"""The correlation id was a string (``sequence`` holds it as sent), not a uint64."""

DECOUPLED_WINDOW = 16
"""Responses of one decoupled request a worker sends beyond those the reader has taken."""


class ShmRef(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A tensor of the request in system shared memory, resolved by the frontend from a
    registered region (clients name regions; only the frontend turns names into keys): the
    worker maps ``/dev/shm/<key>`` and uses bytes ``[offset, offset + byte_size)``."""

    tensor: str
    output: bool  # a requested output to write, else an input to read
    key: str
    offset: int  # from the start of the shared memory object
    byte_size: int


class RequestHeader(msgspec.Struct, array_like=True, gc=False):
    request_id: RequestId
    model: str
    version: str  # "" = latest ready version
    deadline_ns: int  # absolute, time.time_ns(); 0 = no deadline
    trace: str = ""  # W3C traceparent, "" when not traced
    flags: int = 0
    hedge_of: RequestId = 0  # a hedge: the id of the first copy, whose worker it must avoid
    sequence: str = ""  # correlation id of a sequence request ("" = none), see SEQUENCE_*
    sequence_flags: int = 0
    shm: tuple[ShmRef, ...] = ()  # tensors in system shared memory (see frontend.shm)
    # The payload is the first payload_size bytes of this slab (fabric.shm_transport).
    payload_shm: str = ""
    payload_size: int = 0


class ReplyHeader(msgspec.Struct, array_like=True, gc=False):
    request_id: RequestId
    status: str  # "OK" or a gRPC status name
    message: str = ""
    more: bool = False  # a decoupled model's response with more to follow (status OK)
    payload_in_slab: int = 0  # the payload is this many bytes in the request's slab


class CreditHeader(msgspec.Struct, array_like=True, gc=False):
    """The reader of a decoupled request took ``responses`` more of its responses."""

    request_id: RequestId
    responses: int


class CancelHeader(msgspec.Struct, array_like=True, gc=False):
    request_id: RequestId


class AckHeader(msgspec.Struct, array_like=True, gc=False):
    """The worker accepted the request into a batch: from now on it may have run."""

    request_id: RequestId


class ReannounceHeader(msgspec.Struct, array_like=True, gc=False):
    """The broker does not know the worker (it restarted, or declared it dead)."""


class DisconnectHeader(msgspec.Struct, array_like=True, gc=False):
    """The sender leaves on purpose; what it holds is to be given up at once."""


class ModelAnnouncement(msgspec.Struct, array_like=True, gc=False):
    """One ready model version on a worker, with its config as serialized ModelConfig."""

    name: str
    version: str
    config: bytes
    capacity: int  # requests the worker will hold in flight for this model
    max_queued: int = 0  # the model's own queue bound (max_queue_size); 0 = the broker's
    shm_domain: str = ""  # the worker's shared memory domain (fabric.shm_transport), "" = none


class ReadyHeader(msgspec.Struct, array_like=True, gc=False):
    models: list[ModelAnnouncement]


class CatalogEntry(msgspec.Struct, array_like=True, gc=False):
    name: str
    version: str
    config: bytes
    workers: int  # live workers serving this version right now
    shm_domain: str = ""  # the one shared memory domain of all of them; "" when none or mixed


class CatalogHeader(msgspec.Struct, array_like=True, gc=False):
    generation: int
    workers: int  # live workers connected to this broker
    models: list[CatalogEntry]
    incarnation: int = 0  # random per broker process: a change means it restarted


class HeartbeatHeader(msgspec.Struct, array_like=True, gc=False):
    generation: int = 0  # F→B: catalog generation the frontend holds; B→F: current one
    incarnation: int = 0  # B→F: random per broker process (a change means its state is gone)
    routes: list[RouteSpec] = []  # F→B: the routes the frontend holds (fabric.routes)
    # F→B: the decisions it holds on them (they seed a broker that lost its state);
    # B→F: this broker's decisions on the routes the frontend reported.
    decisions: list[RouteDecision] = []


class ControlHeader(msgspec.Struct, array_like=True, gc=False):
    request_id: RequestId
    op: str  # "statistics" | "load" | "unload" | "index"
    model: str = ""  # "" = every model (statistics only)
    version: str = ""
    body: bytes = b""  # load: serialized RepositoryModelLoadRequest when it has parameters


class ControlReplyHeader(msgspec.Struct, array_like=True, gc=False):
    request_id: RequestId
    status: str  # "OK" or a gRPC status name
    message: str = ""
    bodies: list[bytes] = []  # W→B: at most one; B→F: one per worker that answered


CONTROL_OPS = frozenset({"statistics", "load", "unload", "index"})

HEADER_TYPES: dict[MsgType, type[msgspec.Struct]] = {
    MsgType.REQUEST: RequestHeader,
    MsgType.REPLY: ReplyHeader,
    MsgType.CANCEL: CancelHeader,
    MsgType.READY: ReadyHeader,
    MsgType.CATALOG: CatalogHeader,
    MsgType.HEARTBEAT: HeartbeatHeader,
    MsgType.DISCONNECT: DisconnectHeader,
    MsgType.ACK: AckHeader,
    MsgType.REANNOUNCE: ReannounceHeader,
    MsgType.CONTROL: ControlHeader,
    MsgType.CONTROL_REPLY: ControlReplyHeader,
    MsgType.CREDIT: CreditHeader,
}

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[MsgType, msgspec.msgpack.Decoder[msgspec.Struct]] = {
    t: msgspec.msgpack.Decoder(h) for t, h in HEADER_TYPES.items()
}


class MalformedMessage(ValueError):
    """A message that does not follow this protocol; log it with its peer and drop it.

    ``reason`` is a short label from a bounded set (a metric label): the message type it
    claimed in lower case, "batch", "unknown_type" or "envelope"."""

    def __init__(self, message: str, reason: str = "envelope") -> None:
        super().__init__(message)
        self.reason = reason


def encode(msg_type: MsgType, header: msgspec.Struct, *payload: Frame) -> list[Frame]:
    """Any message's frames, for tools and tests; tiers use the typed builders in
    ``fabric.messages``."""
    return [PROTOCOL_TAG, TYPE_FRAME[msg_type], _encoder.encode(header), *payload]


def encode_header(header: msgspec.Struct) -> bytes:
    return _encoder.encode(header)


_batch_decoder = msgspec.msgpack.Decoder(list[list[bytes]])


def pack_batch(messages: Sequence[Sequence[Frame]]) -> list[Frame]:
    """One message carrying ``messages`` (each its frames after the tag). Thread-safe."""
    return [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH], msgspec.msgpack.encode(messages)]


def unpack_batch(body: Frame) -> list[list[bytes]]:
    try:
        messages = _batch_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"bad BATCH body: {exc}", "batch") from exc
    if any(len(m) < 2 for m in messages):
        raise MalformedMessage("BATCH holds a message without type and header", "batch")
    return messages


def coalesce(messages: Sequence[Sequence[Frame]]) -> list[Frame]:
    """Frames to send for ``messages`` bound for one peer (each starting with the tag)."""
    if len(messages) == 1:
        return list(messages[0])
    return pack_batch([m[1:] for m in messages])


class Outgoing(NamedTuple):
    """One ZeroMQ message to send: its frames, whether to copy them, the messages it holds."""

    frames: list[Frame]
    copy: bool
    messages: Sequence[Sequence[Frame]]


def outgoing(messages: Sequence[Sequence[Frame]]) -> list[Outgoing]:
    """What to send for ``messages`` bound for one peer, in their order. Runs of small
    messages are coalesced (and copied), at most ``BATCH_MAX_BYTES`` of payload per BATCH so
    that a BATCH stays far under every receiver's message size limit; each large one goes
    alone under ``LARGE_TAG``, zero-copy: inside a BATCH its payload would be copied into the
    msgpack body and out of it again."""
    if len(messages) == 1 and len(messages[0][-1]) < LARGE_PAYLOAD_BYTES:
        return [Outgoing(list(messages[0]), True, messages)]  # the common case, kept cheap
    out: list[Outgoing] = []
    start = 0
    run_bytes = 0
    for i, m in enumerate(messages):
        size = len(m[-1])
        if size < LARGE_PAYLOAD_BYTES:
            run_bytes += size
            if run_bytes > BATCH_MAX_BYTES:
                out.append(Outgoing(coalesce(messages[start:i]), True, messages[start:i]))
                start, run_bytes = i, size
            continue
        if start < i:
            out.append(Outgoing(coalesce(messages[start:i]), True, messages[start:i]))
        out.append(Outgoing([LARGE_TAG, *m[1:]], False, messages[i : i + 1]))
        start, run_bytes = i + 1, 0
    if start < len(messages):
        out.append(Outgoing(coalesce(messages[start:]), True, messages[start:]))
    return out


def decode_header(msg_type: MsgType, data: Frame) -> msgspec.Struct:
    try:
        return _decoders[msg_type].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"bad {msg_type.name} header: {exc}", msg_type.name.lower()) from exc
