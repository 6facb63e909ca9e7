"""The shared fabric library: wire frames and headers, the typed builders and the one reader
(``fabric.messages``), BATCH, malformed input, deadlines, errors."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from fabric import deadlines, errors, messages
from fabric.messages import Message, iter_messages
from fabric.protocol import (
    FLAG_NON_IDEMPOTENT,
    FRAME_TYPE,
    HEADER_TYPES,
    PROTOCOL_TAG,
    TYPE_FRAME,
    AckHeader,
    CancelHeader,
    CatalogEntry,
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
    ReadyHeader,
    ReannounceHeader,
    ReplyHeader,
    RequestHeader,
    coalesce,
    decode_header,
    encode,
    encode_header,
    unpack_batch,
)


def decode(
    frames: Sequence[Frame], routed: bool = True
) -> tuple[MsgType, msgspec.Struct, list[Frame]]:
    """The one message in ``frames`` through the reader: type, header, frames after the header
    (route first); raises what the reader flags."""
    (msg,) = iter_messages(frames, routed=routed)
    if isinstance(msg, MalformedMessage):
        raise msg
    return msg.type, msg.header, [msg.route, *msg.payload] if msg.route else list(msg.payload)


# One representative header per message type, with non-default values everywhere.
SAMPLES: dict[MsgType, tuple[msgspec.Struct, tuple[bytes, ...]]] = {
    MsgType.REQUEST: (
        RequestHeader(
            2**40 + 7,
            "résnet",
            "3",
            1_700_000_000_123_456_789,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            FLAG_NON_IDEMPOTENT,
        ),
        (b"frontend-1", b"\x00\x01payload"),
    ),
    MsgType.REPLY: (ReplyHeader(9, errors.INVALID_ARGUMENT, "bad shape ü"), (b"fe", b"resp")),
    MsgType.CANCEL: (CancelHeader(12345), (b"fe",)),
    MsgType.READY: (
        ReadyHeader(
            [
                ModelAnnouncement("simple", "1", b"\x0a\x06simple", 8),
                ModelAnnouncement("mlp", "12", b"", 1),
            ]
        ),
        (),
    ),
    MsgType.CATALOG: (
        CatalogHeader(
            77, 2, [CatalogEntry("simple", "1", b"cfg", 2), CatalogEntry("m", "", b"", 0)]
        ),
        (),
    ),
    MsgType.HEARTBEAT: (HeartbeatHeader(2**31 - 1), ()),
    MsgType.DISCONNECT: (DisconnectHeader(), ()),
    MsgType.ACK: (AckHeader(3), (b"fe",)),
    MsgType.REANNOUNCE: (ReannounceHeader(), ()),
    MsgType.CONTROL: (ControlHeader(41, "load", "simple", "2"), (b"fe",)),
    MsgType.CONTROL_REPLY: (
        ControlReplyHeader(41, errors.OK, "", [b"\x00stats", b""]),
        (b"fe",),
    ),
    MsgType.CREDIT: (CreditHeader(2**33, 7), (b"fe",)),
}


def _valid_frames() -> list[bytes]:
    header, payload = SAMPLES[MsgType.REQUEST]
    return [bytes(f) for f in encode(MsgType.REQUEST, header, *payload)]


HEADED_TYPES = [t for t in MsgType if t is not MsgType.BATCH]


# ---- message types and frames ---------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    # BATCH has no header of its own: its body is the messages it carries.
    assert set(SAMPLES) == set(MsgType) - {MsgType.BATCH}
    assert set(HEADER_TYPES) == set(MsgType) - {MsgType.BATCH}
    for msg_type, (header, _) in SAMPLES.items():
        assert isinstance(header, HEADER_TYPES[msg_type])


def test_type_frames_are_single_distinct_bytes() -> None:
    assert all(len(f) == 1 for f in TYPE_FRAME.values())
    assert len(set(TYPE_FRAME.values())) == len(MsgType)
    for t in MsgType:
        assert TYPE_FRAME[t] == bytes([t.value])
        assert FRAME_TYPE[TYPE_FRAME[t]] is t


@pytest.mark.parametrize("msg_type", HEADED_TYPES, ids=lambda t: t.name)
def test_encode_frame_layout(msg_type: MsgType) -> None:
    header, payload = SAMPLES[msg_type]
    frames = encode(msg_type, header, *payload)
    assert frames[0] == PROTOCOL_TAG == b"FAB2"
    assert frames[1] == bytes([msg_type.value])
    assert frames[2] == encode_header(header)
    assert list(frames[3:]) == list(payload)


@pytest.mark.parametrize("msg_type", HEADED_TYPES, ids=lambda t: t.name)
def test_round_trip(msg_type: MsgType) -> None:
    header, payload = SAMPLES[msg_type]
    got_type, got_header, got_payload = decode(encode(msg_type, header, *payload))
    assert got_type is msg_type
    assert type(got_header) is type(header)
    assert got_header == header
    assert [bytes(f) for f in got_payload] == list(payload)


@pytest.mark.parametrize("msg_type", HEADED_TYPES, ids=lambda t: t.name)
def test_round_trip_from_memoryviews(msg_type: MsgType) -> None:
    # The broker hands large frames over as zero-copy buffers.
    header, payload = SAMPLES[msg_type]
    frames = [memoryview(bytes(f)) for f in encode(msg_type, header, *payload)]
    got_type, got_header, got_payload = decode(frames)
    assert got_type is msg_type
    assert got_header == header
    assert [bytes(f) for f in got_payload] == list(payload)


@pytest.mark.parametrize("msg_type", HEADED_TYPES, ids=lambda t: t.name)
def test_decode_header_round_trip(msg_type: MsgType) -> None:
    header, _ = SAMPLES[msg_type]
    assert decode_header(msg_type, encode_header(header)) == header
    assert decode_header(msg_type, memoryview(encode_header(header))) == header


def test_payload_frames_are_passed_through_untouched() -> None:
    big = memoryview(bytes(range(256)) * 4096)
    frames = encode(MsgType.REQUEST, SAMPLES[MsgType.REQUEST][0], b"fe", big)
    assert frames[-1] is big
    _, _, payload = decode(frames)
    assert payload[-1] is big


def test_request_header_defaults_on_the_wire() -> None:
    # Trace and flags may be left off by an older sender.
    data = msgspec.msgpack.encode([1, "m", "", 0])
    assert decode_header(MsgType.REQUEST, data) == RequestHeader(1, "m", "", 0, "", 0)
    assert decode_header(MsgType.HEARTBEAT, msgspec.msgpack.encode([])) == HeartbeatHeader(0)


def test_headers_are_array_like() -> None:
    decoded = msgspec.msgpack.decode(encode_header(ReplyHeader(4, "OK", "")))
    assert decoded == [4, "OK", "", False, 0]
    # An older sender's three-field reply still reads (``more`` defaults to False).
    old = msgspec.msgpack.encode([4, "OK", ""])
    assert decode_header(MsgType.REPLY, old) == ReplyHeader(4, "OK", "", False)


# ---- malformed messages ---------------------------------------------------------------------


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)


@pytest.mark.parametrize("tag", [b"FAB1", b"fab2", b"", b"FAB2\x00", b"\x06"])
def test_wrong_tag(tag: bytes) -> None:
    frames = _valid_frames()
    frames[0] = tag
    with pytest.raises(MalformedMessage, match="tag"):
        decode(frames)


UNUSED_TYPE_BYTE = bytes([max(MsgType) + 1])


@pytest.mark.parametrize(
    "type_frame", [b"\x00", UNUSED_TYPE_BYTE, b"\xff", b"", b"\x01\x01", b"REQUEST"]
)
def test_unknown_type_byte(type_frame: bytes) -> None:
    frames = _valid_frames()
    frames[1] = type_frame
    with pytest.raises(MalformedMessage, match="unknown message type"):
        decode(frames)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_too_few_frames(count: int) -> None:
    with pytest.raises(MalformedMessage, match="too few frames"):
        decode(_valid_frames()[:count])


GARBAGE = [b"", b"\xc1", b"\xff\xff\xff", b"\x94\x01", b"not msgpack at all"]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("msg_type", HEADED_TYPES, ids=lambda t: t.name)
def test_garbage_header(msg_type: MsgType, garbage: bytes) -> None:
    with pytest.raises(MalformedMessage, match=f"bad {msg_type.name} header"):
        decode([PROTOCOL_TAG, TYPE_FRAME[msg_type], garbage])
    with pytest.raises(MalformedMessage):
        decode_header(msg_type, garbage)


def test_trailing_bytes_after_header() -> None:
    frames = _valid_frames()
    frames[2] += b"\x00"
    with pytest.raises(MalformedMessage):
        decode(frames)


WRONG_SHAPES: list[tuple[MsgType, object]] = [
    (MsgType.REQUEST, [1, "m"]),  # too short
    (MsgType.REQUEST, {"request_id": 1, "model": "m", "version": "", "deadline_ns": 0}),
    (MsgType.REQUEST, ["1", "m", "", 0]),  # id as a string
    (MsgType.REQUEST, [1, "m", "", 0.5]),  # float deadline
    (MsgType.REQUEST, [True, "m", "", 0]),  # bool is not an int here
    (MsgType.REQUEST, [1, b"m", "", 0]),  # bytes for a str
    (MsgType.REPLY, [1]),
    (MsgType.REPLY, [1, 2, "x"]),
    (MsgType.CANCEL, []),
    (MsgType.CANCEL, 7),
    (MsgType.READY, [["simple", "1", b"", 1]]),  # announcement not inside a list
    (MsgType.READY, [[["simple", "1", b""]]]),  # announcement missing capacity
    (MsgType.CATALOG, [1, 2]),
    (MsgType.CATALOG, [1, 2, [["m", "1", b"", "many"]]]),
    (MsgType.HEARTBEAT, ["gen"]),
    (MsgType.DISCONNECT, {"generation": 1}),
    (MsgType.REANNOUNCE, 5),
    (MsgType.ACK, ["x"]),
    (MsgType.CONTROL, [1]),
    (MsgType.CONTROL_REPLY, [1, "OK", "", ["a str, not bytes"]]),
]


@pytest.mark.parametrize(("msg_type", "shape"), WRONG_SHAPES, ids=repr)
def test_wrong_header_shape(msg_type: MsgType, shape: object) -> None:
    data = msgspec.msgpack.encode(shape)
    with pytest.raises(MalformedMessage, match=f"bad {msg_type.name} header"):
        decode([PROTOCOL_TAG, TYPE_FRAME[msg_type], data])


def test_header_of_another_type_is_rejected() -> None:
    # A REPLY header sent under the REQUEST type byte.
    data = encode_header(ReplyHeader(1, "OK", ""))
    with pytest.raises(MalformedMessage, match="bad REQUEST header"):
        decode([PROTOCOL_TAG, TYPE_FRAME[MsgType.REQUEST], data])


# ---- deadlines ------------------------------------------------------------------------------


class FakeTime:
    """Stands in for the ``time`` module inside ``fabric.deadlines``."""

    def __init__(self, wall_ns: int, mono_s: float) -> None:
        self.wall_ns = wall_ns
        self.mono_s = mono_s

    def time_ns(self) -> int:
        return self.wall_ns

    def monotonic(self) -> float:
        return self.mono_s


WALL_NS = 1_700_000_000_000_000_000


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime(WALL_NS, 500.0)
    monkeypatch.setattr(deadlines, "time", fake)
    return fake


def test_to_monotonic(fake_time: FakeTime) -> None:
    assert deadlines.to_monotonic(0) is None
    assert deadlines.to_monotonic(WALL_NS + 3_000_000_000) == pytest.approx(503.0)
    assert deadlines.to_monotonic(WALL_NS - 500_000_000) == pytest.approx(499.5)


def test_deadline_from_another_process(fake_time: FakeTime) -> None:
    wire = WALL_NS + 250_000_000  # set 0.25 s ahead by the frontend's wall clock
    fake_time.wall_ns += 100_000_000  # read 0.1 s later, in another process
    fake_time.mono_s = 9_000.0
    assert deadlines.to_monotonic(wire) == pytest.approx(9_000.15)


# ---- errors ---------------------------------------------------------------------------------


def test_status_codes_are_grpc_status_names() -> None:
    import grpc  # the test may use grpc; fabric itself never does

    names = {code.name for code in grpc.StatusCode}
    assert errors.STATUS_CODES.issubset(names)
    assert set(errors.RETRYABLE) == {errors.UNAVAILABLE}
    assert errors.RETRYABLE.issubset(errors.STATUS_CODES)


@pytest.mark.parametrize("code", sorted(errors.STATUS_CODES))
def test_request_error_keeps_known_codes(code: str) -> None:
    exc = errors.RequestError(code, "why")
    assert exc.code == code
    assert exc.message == "why"
    assert str(exc) == "why"


@pytest.mark.parametrize("code", ["", "BOGUS", "unavailable", "Internal", "DATA_LOSS ", "14"])
def test_request_error_maps_unknown_codes_to_internal(code: str) -> None:
    exc = errors.RequestError(code, "lost")
    assert exc.code == errors.INTERNAL
    assert exc.message == "lost"
    assert repr(exc) == "RequestError(INTERNAL, 'lost')"


def test_request_error_is_raisable() -> None:
    with pytest.raises(errors.RequestError) as info:
        raise errors.RequestError(errors.NOT_FOUND, "no such model")
    assert info.value.code == errors.NOT_FOUND
    assert isinstance(info.value, Exception)


def test_batch_round_trips_messages_in_order() -> None:
    messages = [encode(t, h, *payload) for t, (h, payload) in SAMPLES.items()]
    frames = coalesce(messages)
    assert frames[:2] == [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH]]
    unpacked = unpack_batch(frames[2])
    assert [[bytes(f) for f in m[1:]] for m in messages] == unpacked
    for original, sub in zip(messages, unpacked, strict=True):
        msg_type, header, _ = decode([PROTOCOL_TAG, *sub])
        assert (msg_type, header) == decode(original)[:2]


def test_coalesce_sends_a_lone_message_as_itself() -> None:
    message = encode(MsgType.CANCEL, CancelHeader(7))
    assert coalesce([message]) == message


@pytest.mark.parametrize(
    "body", [b"", b"\xc1", msgspec.msgpack.encode([[b"\x01"]]), msgspec.msgpack.encode([1, 2])]
)
def test_malformed_batch_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        unpack_batch(body)


# ---- typed builders through the one reader --------------------------------------------------

REQ = SAMPLES[MsgType.REQUEST][0]
assert isinstance(REQ, RequestHeader)
PAYLOAD = b"\x00\x01payload"
FE_ID = b"fe-\x00\xff"

# (builder output, routed link?, type, header, route, payload) for every message kind and
# direction in the wire table.
BUILT: list[tuple[str, list[Frame], bool, MsgType, msgspec.Struct, bytes, list[bytes]]] = [
    ("request F→B", messages.request(REQ, PAYLOAD), False, MsgType.REQUEST, REQ, b"", [PAYLOAD]),
    (
        "request B→W",
        messages.request(encode_header(REQ), PAYLOAD, FE_ID),
        True,
        MsgType.REQUEST,
        REQ,
        FE_ID,
        [PAYLOAD],
    ),
    (
        "reply W→B",
        messages.reply(ReplyHeader(9, "OK", ""), [b"resp"], FE_ID),
        True,
        MsgType.REPLY,
        ReplyHeader(9, "OK", ""),
        FE_ID,
        [b"resp"],
    ),
    (
        "reply B→F",
        messages.reply(encode_header(ReplyHeader(9, "OK", "")), [b"resp"]),
        False,
        MsgType.REPLY,
        ReplyHeader(9, "OK", ""),
        b"",
        [b"resp"],
    ),
    (
        "error reply B→F",
        messages.reply(ReplyHeader(9, errors.NOT_FOUND, "no")),
        False,
        MsgType.REPLY,
        ReplyHeader(9, errors.NOT_FOUND, "no"),
        b"",
        [],
    ),
    ("cancel F→B", messages.cancel(5), False, MsgType.CANCEL, CancelHeader(5), b"", []),
    ("cancel B→W", messages.cancel(5, FE_ID), True, MsgType.CANCEL, CancelHeader(5), FE_ID, []),
    ("ack W→B", messages.ack(6, FE_ID), True, MsgType.ACK, AckHeader(6), FE_ID, []),
    (
        "ready",
        messages.ready([ModelAnnouncement("m", "1", b"cfg", 4, 2)]),
        True,
        MsgType.READY,
        ReadyHeader([ModelAnnouncement("m", "1", b"cfg", 4, 2)]),
        b"",
        [],
    ),
    ("reannounce", messages.reannounce(), True, MsgType.REANNOUNCE, ReannounceHeader(), b"", []),
    (
        "catalog",
        messages.catalog(CatalogHeader(3, 1, [], 42)),
        False,
        MsgType.CATALOG,
        CatalogHeader(3, 1, [], 42),
        b"",
        [],
    ),
    ("heartbeat", messages.heartbeat(), True, MsgType.HEARTBEAT, HeartbeatHeader(), b"", []),
    (
        "heartbeat with state",
        messages.heartbeat(HeartbeatHeader(7, 8)),
        False,
        MsgType.HEARTBEAT,
        HeartbeatHeader(7, 8),
        b"",
        [],
    ),
    ("disconnect", messages.disconnect(), False, MsgType.DISCONNECT, DisconnectHeader(), b"", []),
    (
        "control F→B",
        messages.control(ControlHeader(1, "statistics")),
        False,
        MsgType.CONTROL,
        ControlHeader(1, "statistics"),
        b"",
        [],
    ),
    (
        "control B→W",
        messages.control(encode_header(ControlHeader(1, "load", "m")), FE_ID),
        True,
        MsgType.CONTROL,
        ControlHeader(1, "load", "m"),
        FE_ID,
        [],
    ),
    (
        "control reply W→B",
        messages.control_reply(ControlReplyHeader(1, "OK", "", [b"s"]), FE_ID),
        True,
        MsgType.CONTROL_REPLY,
        ControlReplyHeader(1, "OK", "", [b"s"]),
        FE_ID,
        [],
    ),
    (
        "control reply B→F",
        messages.control_reply(ControlReplyHeader(1, "OK", "", [b"s", b"t"])),
        False,
        MsgType.CONTROL_REPLY,
        ControlReplyHeader(1, "OK", "", [b"s", b"t"]),
        b"",
        [],
    ),
    ("credit F→B", messages.credit(5, 2), False, MsgType.CREDIT, CreditHeader(5, 2), b"", []),
    (
        "credit B→W",
        messages.credit(5, 2, FE_ID),
        True,
        MsgType.CREDIT,
        CreditHeader(5, 2),
        FE_ID,
        [],
    ),
]


def test_builders_cover_every_message_type() -> None:
    assert {b[3] for b in BUILT} == set(MsgType) - {MsgType.BATCH}


@pytest.mark.parametrize(
    ("frames", "routed", "msg_type", "header", "route", "payload"),
    [b[1:] for b in BUILT],
    ids=[b[0] for b in BUILT],
)
def test_builder_round_trips_through_the_reader(
    frames: list[Frame],
    routed: bool,
    msg_type: MsgType,
    header: msgspec.Struct,
    route: bytes,
    payload: list[bytes],
) -> None:
    assert frames[0] == PROTOCOL_TAG
    (msg,) = iter_messages(frames, routed=routed)
    assert isinstance(msg, Message)
    assert msg.type is msg_type
    assert type(msg.header) is HEADER_TYPES[msg_type]
    assert msg.header == header
    assert msg.header_frame is frames[2]  # forwarded as received, never re-encoded
    assert msg.route == route
    assert [bytes(f) for f in msg.payload] == payload


def test_every_header_type_belongs_to_one_message_type() -> None:
    # Tiers tell messages apart by their header's class.
    assert len(set(HEADER_TYPES.values())) == len(HEADER_TYPES)


def test_builders_never_copy_payload_frames() -> None:
    big = memoryview(bytes(range(256)) * 4096)
    frames = messages.request(REQ, big, FE_ID)
    assert frames[-1] is big
    (msg,) = iter_messages(frames, routed=True)
    assert isinstance(msg, Message)
    assert msg.payload[0] is big
    reply = messages.reply(msg.header_frame, [big])
    assert reply[-1] is big


def test_type_frames_are_shared_not_built_per_message() -> None:
    assert messages.cancel(1)[1] is messages.cancel(2)[1]
    assert messages.heartbeat()[2] is messages.heartbeat()[2]


def test_is_request() -> None:
    assert messages.is_request(messages.request(REQ, PAYLOAD, FE_ID))
    assert not messages.is_request(messages.reply(ReplyHeader(1, "OK")))
    assert not messages.is_request([])


@pytest.mark.parametrize(
    ("frames", "routed", "why"),
    [
        ([PROTOCOL_TAG, TYPE_FRAME[MsgType.REQUEST], encode_header(REQ)], False, "0 payload"),
        ([*messages.request(REQ, PAYLOAD), b"extra"], False, "2 payload"),
        (messages.request(REQ, PAYLOAD), True, "0 payload"),  # payload taken as the route
        (
            [PROTOCOL_TAG, TYPE_FRAME[MsgType.REPLY], encode_header(ReplyHeader(1, "OK"))],
            True,
            "without frontend identity",
        ),
        (messages.reply(ReplyHeader(1, "OK"), [b"a", b"b"]), False, "2 payload"),
        ([*messages.heartbeat(), b"x"], False, "1 payload"),
        (messages.cancel(1, FE_ID), False, "1 payload"),  # a route where none belongs
    ],
)
def test_reader_checks_the_frames_each_type_carries(
    frames: list[Frame], routed: bool, why: str
) -> None:
    with pytest.raises(MalformedMessage, match=why):
        decode(frames, routed)


# ---- BATCH --------------------------------------------------------------------------------


def test_batch_is_unpacked_transparently_in_order() -> None:
    built = [b[1] for b in BUILT if b[2]]  # the broker↔worker link's messages
    got = list(iter_messages(coalesce(built), routed=True))
    assert all(isinstance(m, Message) for m in got)
    assert [(m.type, m.header, m.route) for m in got if isinstance(m, Message)] == [
        (b[3], b[4], b[5]) for b in BUILT if b[2]
    ]


def test_a_bad_message_in_a_batch_costs_only_itself() -> None:
    good = messages.reply(ReplyHeader(1, "OK"), [b"r"])
    bad_header = [PROTOCOL_TAG, TYPE_FRAME[MsgType.REPLY], b"\xc1"]
    unknown = [PROTOCOL_TAG, b"\x7f", b"\x90"]
    nested = coalesce([good, good])
    frames = coalesce([good, bad_header, unknown, nested, good])
    got = list(iter_messages(frames, routed=False))
    assert [type(m) for m in got] == [
        Message,
        MalformedMessage,
        MalformedMessage,
        MalformedMessage,
        Message,
    ]
    assert "bad REPLY header" in str(got[1])
    assert "unknown message type" in str(got[2])
    assert "nested BATCH" in str(got[3])


@pytest.mark.parametrize(
    "frames",
    [
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH], b"\xc1"],
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH], msgspec.msgpack.encode([[b"\x01"]])],
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH], msgspec.msgpack.encode([[b"", b""]]), b"x"],
    ],
    ids=["garbage body", "message without header", "frames after the body"],
)
def test_malformed_batch_is_flagged_not_raised(frames: list[bytes]) -> None:
    (got,) = iter_messages(frames, routed=True)
    assert isinstance(got, MalformedMessage)
