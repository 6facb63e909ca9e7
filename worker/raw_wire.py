"""Raw tensor bytes in and out of the protobuf wire format without copying them.

Protobuf's parser copies every ``raw_input_contents`` entry into its arena, and reading the
field copies it again into a Python ``bytes``; serializing a response copies each output
three times (``tobytes``, the repeated field, ``SerializeToString``). For large tensors that
is most of a call's CPU. Here a request is split at the top level: the small rest is parsed
by protobuf as usual, the raw entries become ``memoryview`` slices of the very buffer the
request arrived in (ZeroMQ's, when the fabric received it in place). A response is the
serialized message without raw outputs, followed by each raw output written as field 6
straight from the output array: one copy, the final join. Protobuf allows a repeated field's
entries anywhere in a message, in order, so both forms parse to the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fabric.errors import INVALID_ARGUMENT, RESOURCE_EXHAUSTED, RequestError
from fabric.pbwire import encode_varint, read_varint

IN_PLACE_MIN_BYTES = 64 * 1024
"""Requests and responses from this size on take the paths here; below it protobuf's own C
code is faster than a scan in Python, and the copies it makes are cheap."""

_RAW_INPUT = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, wire type 2
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def split_raw_inputs(data: bytes | memoryview) -> tuple[bytes, list[memoryview]]:
    """The request without its ``raw_input_contents`` (to parse), and those entries as views
    of ``data``, in order."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        tag, pos = read_varint(view, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _WIRE_LEN:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: truncated")
            if number == _RAW_INPUT:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        elif wire == _WIRE_VARINT:
            _, pos = read_varint(view, pos)
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        else:
            raise RequestError(INVALID_ARGUMENT, f"malformed ModelInferRequest: wire type {wire}")
        rest.append(view[start:pos])
    if pos != end:
        raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: truncated")
    return b"".join(rest), raw


class RawParts:
    """A serialized ModelInferResponse not yet joined: ``head`` (without raw outputs), then
    each raw output as field 6 straight from its array. ``join()`` makes the bytes (the one
    copy of each tensor); a reply that goes into a shared memory slab is written there part
    by part instead, so the tensors are copied once in all (``fabric.shm_transport``)."""

    __slots__ = ("parts", "size")

    def __init__(self, head: bytes, raw: Sequence[np.ndarray | bytes]) -> None:
        parts: list[bytes | memoryview] = [head]
        for item in raw:
            if isinstance(item, np.ndarray):
                array = item if item.flags.c_contiguous else np.ascontiguousarray(item)
                buf: bytes | memoryview = array.data.cast("B") if array.ndim else array.tobytes()
            else:
                buf = item
            parts.append(_RAW_OUTPUT_TAG)
            parts.append(encode_varint(len(buf)))
            parts.append(buf)
        self.parts = parts
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size

    def join(self) -> bytes:
        return b"".join(self.parts)


def joined(body: bytes | RawParts | None) -> bytes | None:
    """The bytes of a reply body, joining unjoined parts."""
    return body.join() if isinstance(body, RawParts) else body


def reply_too_large(size: int, limit: int) -> tuple[str, str, None]:
    """The answer instead of a response over the message size limit: past it the frontend
    could not send it, and a ZeroMQ peer past its own limit drops the whole connection."""
    return (
        RESOURCE_EXHAUSTED,
        f"response of {size} bytes exceeds the message size limit of {limit} bytes "
        "(--max-message-bytes, FABRIC_MAX_MESSAGE_BYTES)",
        None,
    )
