"""The sticky key of a request: a gRPC metadata value, or a ``ModelInferRequest`` parameter
read from the raw request bytes (the frontend never decodes a whole request)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence

from fabric.errors import RequestError
from fabric.pbwire import read_varint

from .table import RouteState

Metadata = Sequence[tuple[str, str | bytes]]
MetadataSource = Callable[[], Metadata | None]

# ModelInferRequest.parameters is field 4: map<string, InferParameter>, each entry a message
# {1: key, 2: value}; InferParameter is a oneof of these fields.
_PARAMETERS = 4
_BOOL, _INT64, _STRING, _DOUBLE, _UINT64 = 1, 2, 3, 4, 5
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Malformed(Exception):
    pass


_UNREADABLE = (_Malformed, RequestError)  # RequestError: a bad varint (fabric.pbwire)


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes | memoryview]]:
    """(field number, wire type, value) of one message level; length-delimited values as
    slices, fixed64 as its raw 8 bytes."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = read_varint(data, pos)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise _Malformed
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == _I64:
            yield number, wire, data[pos : pos + 8]
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise _Malformed


def parameter_value(payload: bytes | memoryview, name: str) -> bytes | None:
    """The value of request parameter ``name`` as bytes (numbers in decimal), or None when
    the request does not carry it or cannot be read (the worker then reports what is wrong)."""
    wanted = name.encode()
    found: bytes | None = None
    try:
        for number, wire, entry in _fields(payload):
            if number != _PARAMETERS or wire != _LEN or isinstance(entry, int):
                continue
            key: bytes = b""
            value: bytes | None = None
            for n, w, v in _fields(entry):
                if n == 1 and w == _LEN and not isinstance(v, int):
                    key = bytes(v)
                elif n == 2 and w == _LEN and not isinstance(v, int):
                    value = _parameter(v)
            if key == wanted and value is not None:
                found = value  # last value wins, as protobuf's parser does
    except _UNREADABLE:
        return None
    return found


def _parameter(data: bytes | memoryview) -> bytes | None:
    value: bytes | None = None
    for number, wire, v in _fields(data):
        if number == _STRING and wire == _LEN and not isinstance(v, int):
            value = bytes(v)
        elif number in (_INT64, _UINT64) and wire == _VARINT and isinstance(v, int):
            if number == _INT64 and v >= 1 << 63:
                v -= 1 << 64
            value = str(v).encode()
        elif number == _BOOL and wire == _VARINT and isinstance(v, int):
            value = b"true" if v else b"false"
        elif number == _DOUBLE and wire == _I64 and not isinstance(v, int):
            value = repr(struct.unpack("<d", v)[0]).encode()
    return value


def sticky_key(state: RouteState, payload: bytes, metadata: MetadataSource | None) -> bytes | None:
    """The request's sticky key for ``state``, or None (then the split is by weight)."""
    if state.sticky_header:
        md = metadata() if metadata is not None else None
        for k, v in md or ():
            if k == state.sticky_header:
                return v.encode() if isinstance(v, str) else v
        return None
    if state.sticky_parameter:
        return parameter_value(payload, state.sticky_parameter)
    return None
