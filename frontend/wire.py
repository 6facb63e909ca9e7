"""Just enough protobuf wire format to route a request without decoding its tensors.

The frontend passes ``ModelInferRequest`` and ``ModelInferResponse`` bytes through untouched;
it only needs the model name, version and id of a request, and to wrap a response as a
``ModelStreamInferResponse``. Both are done here on the raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabric.errors import INVALID_ARGUMENT, RequestError
from fabric.pbwire import encode_varint, read_varint
from fabric.protocol import ShmRef

# ModelInferRequest fields read here.
_MODEL_NAME = 1
_MODEL_VERSION = 2
_ID = 3
# ModelStreamInferResponse fields.
_STREAM_ERROR_TAG = b"\x0a"  # field 1 (error_message), wire type 2
_STREAM_RESPONSE_TAG = b"\x12"  # field 2 (infer_response), wire type 2

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_START_GROUP, _WIRE_END_GROUP, _WIRE_I32 = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class RequestRoute:
    model: str
    version: str
    id: str
    shm: tuple[ShmRef, ...] = ()  # tensors in system shared memory, resolved (frontend.shm)


def scan_request(data: bytes | memoryview) -> RequestRoute:
    """Model name, version and id of a serialized ModelInferRequest (last value wins)."""
    fields: dict[int, bytes | memoryview] = {}
    groups: list[int] = []  # open (deprecated) groups: protobuf skips them as unknown fields
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _WIRE_LEN:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: truncated")
            if number <= _ID and not groups:
                fields[number] = data[pos : pos + length]
            pos += length
        elif wire == _WIRE_VARINT:
            _, pos = read_varint(data, pos)
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        elif wire == _WIRE_START_GROUP:
            groups.append(number)
        elif wire == _WIRE_END_GROUP and groups and groups[-1] == number:
            groups.pop()
        else:
            raise RequestError(INVALID_ARGUMENT, f"malformed ModelInferRequest: wire type {wire}")
    if pos != end:
        raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: truncated")
    if groups:
        raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: unterminated group")
    try:
        return RequestRoute(
            bytes(fields.get(_MODEL_NAME, b"")).decode(),
            bytes(fields.get(_MODEL_VERSION, b"")).decode(),
            bytes(fields.get(_ID, b"")).decode(),
        )
    except UnicodeDecodeError as exc:
        raise RequestError(INVALID_ARGUMENT, "model name, version or id is not UTF-8") from exc


def stream_response(infer_response: bytes | memoryview) -> bytes:
    """A ModelStreamInferResponse carrying ``infer_response`` (serialized ModelInferResponse)."""
    return b"".join((_STREAM_RESPONSE_TAG, encode_varint(len(infer_response)), infer_response))


def stream_error(message: str, infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse carrying an error and the failed request's model, version, id."""
    msg = message.encode()
    return b"".join(
        (
            _STREAM_ERROR_TAG,
            encode_varint(len(msg)),
            msg,
            _STREAM_RESPONSE_TAG,
            encode_varint(len(infer_response)),
            infer_response,
        )
    )
