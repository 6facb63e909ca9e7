"""Protobuf varints, for the few places that read or frame a message without parsing it
(routing fields, raw tensor slices, shared-memory parameters, stream responses)."""

from __future__ import annotations

from fabric.errors import INVALID_ARGUMENT, RequestError

BAD_VARINT = "malformed ModelInferRequest: bad varint"


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; INVALID_ARGUMENT when it is cut
    short or longer than 64 bits."""
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise RequestError(INVALID_ARGUMENT, BAD_VARINT)
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if not value:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)
