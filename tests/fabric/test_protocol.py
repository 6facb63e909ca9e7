"""The shared fabric library: wire frames and headers, liveness and backoff, deadlines, errors."""

from __future__ import annotations

import random

import msgspec
import pytest

from fabric import deadlines, errors, heartbeat
from fabric.heartbeat import Backoff, Liveness
from fabric.protocol import (
    FLAG_NON_IDEMPOTENT,
    FRAME_TYPE,
    HEADER_TYPES,
    PROTOCOL_TAG,
    TYPE_FRAME,
    CancelHeader,
    CatalogEntry,
    CatalogHeader,
    ControlHeader,
    ControlReplyHeader,
    HeartbeatHeader,
    MalformedMessage,
    ModelAnnouncement,
    MsgType,
    ReadyHeader,
    ReplyHeader,
    RequestHeader,
    coalesce,
    decode,
    decode_header,
    encode,
    encode_header,
    unpack_batch,
)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


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
    MsgType.DISCONNECT: (HeartbeatHeader(5), ()),
    MsgType.ACK: (CancelHeader(3), (b"fe",)),
    MsgType.CONTROL: (ControlHeader(41, "load", "simple", "2"), (b"fe",)),
    MsgType.CONTROL_REPLY: (
        ControlReplyHeader(41, errors.OK, "", [b"\x00stats", b""]),
        (b"fe",),
    ),
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
    assert frames[0] == PROTOCOL_TAG == b"FAB1"
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
    assert decoded == [4, "OK", ""]


# ---- malformed messages ---------------------------------------------------------------------


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)


@pytest.mark.parametrize("tag", [b"FAB2", b"fab1", b"", b"FAB1\x00", b"\x06"])
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


# ---- liveness and backoff -------------------------------------------------------------------


def test_liveness_defaults_are_the_named_constants() -> None:
    live = Liveness(clock=FakeClock())
    assert live.interval_s == heartbeat.HEARTBEAT_INTERVAL_S
    assert live.liveness == heartbeat.HEARTBEAT_LIVENESS


def test_liveness_expires_after_missed_intervals() -> None:
    clock = FakeClock(50.0)
    live = Liveness(interval_s=0.5, liveness=4, clock=clock)
    assert live.last_seen == 50.0
    assert live.expiry == 52.0
    clock.advance(1.999)
    assert live.alive()
    clock.advance(0.001)  # exactly at expiry: dead
    assert not live.alive()


def test_liveness_traffic_resets_expiry() -> None:
    clock = FakeClock(0.0)
    live = Liveness(interval_s=1.0, liveness=3, clock=clock)
    clock.advance(2.5)
    live.seen()
    assert live.last_seen == 2.5
    assert live.expiry == 5.5
    clock.advance(2.9)
    assert live.alive()
    clock.advance(0.1)
    assert not live.alive()
    live.seen()  # a dead peer that speaks again is alive
    assert live.alive()


def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: list[tuple[float, float]] = []

    def upper(lo: float, hi: float) -> float:
        bounds.append((lo, hi))
        return hi

    monkeypatch.setattr(heartbeat.random, "uniform", upper)
    backoff = Backoff(base_s=0.1, cap_s=1.0)
    delays = [backoff.next_delay_s() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert all(lo == 0 for lo, _ in bounds)  # full jitter
    assert backoff.attempt == 7
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay_s() == pytest.approx(0.1)


def test_backoff_delays_stay_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat, "random", random.Random(1234))
    backoff = Backoff(base_s=0.05, cap_s=2.0)
    delays = []
    for attempt in range(40):
        delay = backoff.next_delay_s()
        assert 0.0 <= delay <= min(2.0, 0.05 * 2**attempt)
        delays.append(delay)
    # Jittered, not constant.
    assert len(set(delays)) > 30


def test_backoff_survives_a_long_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat, "random", random.Random(99))
    backoff = Backoff(base_s=0.5, cap_s=8.0)
    for _ in range(1100):
        assert 0.0 <= backoff.next_delay_s() <= 8.0


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
