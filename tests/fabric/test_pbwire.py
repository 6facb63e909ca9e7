"""fabric.pbwire: varints as protobuf writes them, and clean refusals of broken ones."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # protobuf's own writer

from fabric.errors import INVALID_ARGUMENT, RequestError
from fabric.pbwire import encode_varint, read_varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, 2**64 - 1])
def test_round_trip_matches_protobuf(value: int) -> None:
    data = encode_varint(value)
    assert data == _VarintBytes(value)
    assert read_varint(b"\x00" + data + b"\x05", 1) == (value, 1 + len(data))


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff" * 11])
def test_cut_short_or_too_long_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(RequestError) as info:
        read_varint(data, 0)
    assert info.value.code == INVALID_ARGUMENT and "bad varint" in info.value.message
