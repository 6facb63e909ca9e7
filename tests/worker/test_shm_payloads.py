"""The worker's side of the shared memory transport (``worker.shm_payloads``): a request that
came in a slab is read in place, and only its final, large reply is written back into the slab;
anything else stays inline. Slabs live in a temporary directory standing in for ``/dev/shm``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fabric import errors, shm_transport
from fabric.errors import RequestError
from fabric.protocol import RequestHeader
from fabric.shm_transport import MIN_BYTES, TAG_BYTES, Slab, SlabMaps, SlabPool
from worker import shm_payloads
from worker.raw_wire import RawParts
from worker.shm_payloads import ShmPayloads

MAX_BYTES = 64 << 20
FRONTEND = b"frontend-1"
REQUEST = b"\x01\x02" * (MIN_BYTES // 2)


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points ``ShmPayloads`` at ``tmp_path`` instead of ``/dev/shm``."""

    class TmpSlabMaps(SlabMaps):
        def __init__(self, domain: str) -> None:
            super().__init__(domain, tmp_path)

    monkeypatch.setattr(shm_payloads, "SlabMaps", TmpSlabMaps)
    monkeypatch.setattr(
        shm_payloads, "domain_if", lambda enabled: shm_transport.domain_if(enabled, tmp_path)
    )
    return tmp_path


@pytest.fixture
def payloads(shm_dir: Path) -> Iterator[ShmPayloads]:
    made = ShmPayloads(enabled=True)
    assert made.domain == shm_transport.local_domain(shm_dir)
    yield made
    made.close()


@pytest.fixture
def pool(shm_dir: Path, payloads: ShmPayloads) -> Iterator[SlabPool]:
    made = SlabPool(payloads.domain, shm_dir)
    yield made
    made.close()


def send(pool: SlabPool, request_id: int, payload: bytes = REQUEST) -> tuple[RequestHeader, Slab]:
    """What the frontend does: the payload into a slab, its name into the header."""
    slab = pool.acquire(payload)
    assert slab is not None
    header = RequestHeader(request_id, "identity_fp32", "", 0)
    header.payload_shm, header.payload_size = slab.name, len(payload)
    return header, slab


def test_incoming_is_a_view_of_the_request_in_the_slab(
    payloads: ShmPayloads, pool: SlabPool
) -> None:
    header, slab = send(pool, 1)
    view = payloads.incoming(header, FRONTEND, MAX_BYTES)
    assert view == REQUEST
    slab.map[:2] = b"\xff\xff"  # a view, not a copy
    assert view[:2] == b"\xff\xff"
    view.release()


def test_a_large_final_reply_goes_into_the_slab(payloads: ShmPayloads, pool: SlabPool) -> None:
    header, slab = send(pool, 11)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    body = b"\x07" * MIN_BYTES
    assert payloads.outgoing(FRONTEND, 11, body, more=False) == (None, len(body))
    assert pool.reply(slab, 11, len(body)) == body
    # The request is forgotten once answered: a second reply under its id goes inline.
    assert payloads.outgoing(FRONTEND, 11, body, more=False) == (body, 0)


def parts(seed: int) -> RawParts:
    """A response head and two large raw outputs, one of them not contiguous."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, MIN_BYTES, dtype=np.uint8)
    b = rng.standard_normal((64, MIN_BYTES // 256), dtype=np.float32)[:, ::2]
    return RawParts(b"\x0a\x05model", [a, b])


def test_unjoined_parts_are_written_into_the_slab_as_their_join(
    payloads: ShmPayloads, pool: SlabPool
) -> None:
    header, slab = send(pool, 13)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    body = parts(1)
    expected = body.join()
    assert len(body) == len(expected)
    assert payloads.outgoing(FRONTEND, 13, body, more=False) == (None, len(expected))
    assert pool.reply(slab, 13, len(expected)) == expected


def test_unjoined_parts_that_stay_inline_are_joined(payloads: ShmPayloads, pool: SlabPool) -> None:
    body = parts(2)
    assert payloads.outgoing(FRONTEND, 14, body, more=False) == (body.join(), 0)  # no slab
    header, slab = send(pool, 15, b"\x01" * (1 << 19))  # a slab too small for the reply
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    big = RawParts(b"", [np.zeros(slab.capacity // 2, np.uint8)])
    assert payloads.outgoing(FRONTEND, 15, big, more=False) == (big.join(), 0)


def test_decoupled_responses_stay_inline_and_the_last_goes_into_the_slab(
    payloads: ShmPayloads, pool: SlabPool
) -> None:
    header, slab = send(pool, 12)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    part = b"\x01" * MIN_BYTES
    last = b"\x02" * MIN_BYTES
    assert payloads.outgoing(FRONTEND, 12, part, more=True) == (part, 0)
    assert payloads.outgoing(FRONTEND, 12, last, more=False) == (None, len(last))
    assert pool.reply(slab, 12, len(last)) == last


def test_small_and_empty_final_replies_stay_inline(payloads: ShmPayloads, pool: SlabPool) -> None:
    small = b"\x03" * (MIN_BYTES - 1)
    for request_id, body in ((21, small), (22, None), (23, b"")):
        header, slab = send(pool, request_id)
        payloads.incoming(header, FRONTEND, MAX_BYTES).release()
        assert payloads.outgoing(FRONTEND, request_id, body, more=False) == (body, 0)
        start = slab.reply_offset
        assert slab.map[start : start + TAG_BYTES] == bytes(TAG_BYTES)  # nothing written


def test_replies_of_requests_not_in_a_slab_stay_inline(
    payloads: ShmPayloads, pool: SlabPool
) -> None:
    header, _ = send(pool, 31)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    body = b"\x04" * MIN_BYTES
    assert payloads.outgoing(FRONTEND, 32, body, more=False) == (body, 0)  # another id
    assert payloads.outgoing(b"frontend-2", 31, body, more=False) == (body, 0)  # another route
    assert payloads.outgoing(FRONTEND, 31, body, more=False) == (None, len(body))


def test_a_reply_too_large_for_the_slab_stays_inline(payloads: ShmPayloads, pool: SlabPool) -> None:
    header, slab = send(pool, 41)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    body = b"\x05" * (slab.capacity // 2)  # with its tag it does not fit the upper half
    assert payloads.outgoing(FRONTEND, 41, body, more=False) == (body, 0)


def test_a_slab_its_frontend_gave_up_leaves_the_reply_inline(
    payloads: ShmPayloads, pool: SlabPool
) -> None:
    header, slab = send(pool, 51)
    payloads.incoming(header, FRONTEND, MAX_BYTES).release()
    pool.release(slab, reuse=False)  # the frontend's caller timed out: the name is unlinked
    later, _ = send(pool, 52)
    payloads.incoming(later, FRONTEND, MAX_BYTES).release()  # drops the unlinked slab's map
    body = b"\x06" * MIN_BYTES
    assert payloads.outgoing(FRONTEND, 51, body, more=False) == (body, 0)  # no crash
    assert payloads.outgoing(FRONTEND, 52, body, more=False) == (None, len(body))


def test_a_bad_slab_name_is_refused(payloads: ShmPayloads) -> None:
    header = RequestHeader(61, "identity_fp32", "", 0)
    header.payload_shm, header.payload_size = f"fsrv.{payloads.domain}.1.abcdef01.1", 10
    with pytest.raises(RequestError) as exc:
        payloads.incoming(header, FRONTEND, MAX_BYTES)
    assert exc.value.code == errors.UNAVAILABLE


def test_disabled_refuses_payloads_in_shared_memory(shm_dir: Path) -> None:
    off = ShmPayloads(enabled=False)
    assert off.domain == ""
    pool = SlabPool(shm_transport.local_domain(shm_dir), shm_dir)
    header, _ = send(pool, 71)
    with pytest.raises(RequestError) as exc:
        off.incoming(header, FRONTEND, MAX_BYTES)
    assert exc.value.code == errors.UNAVAILABLE
    body = b"\x08" * MIN_BYTES
    assert off.outgoing(FRONTEND, 71, body, more=False) == (body, 0)
    off.close()
    pool.close()
