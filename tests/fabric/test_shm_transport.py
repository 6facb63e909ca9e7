"""Shared memory slabs (``fabric.shm_transport``) in a temporary directory standing in for
``/dev/shm``: sizing, the frontend's pool (reuse, unlink, idle bound, sweep), the reply region
and its request-id tag, the worker's checks before it maps a name, and which models a frontend
sends through shared memory (``frontend.brokers.shm_models``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import errors, shm_transport
from fabric.errors import RequestError
from fabric.protocol import CatalogEntry, CatalogHeader
from fabric.shm_transport import (
    TAG_BYTES,
    Slab,
    SlabMaps,
    SlabPool,
    local_domain,
    slab_capacity,
)
from frontend.brokers import shm_models

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
MAX_BYTES = 64 * MIB
OTHER_DOMAIN = "0123456789abcdef"


@pytest.fixture
def domain(tmp_path: Path) -> str:
    found = local_domain(tmp_path)
    assert len(found) == 16
    return found


@pytest.fixture
def pool(tmp_path: Path, domain: str) -> Iterator[SlabPool]:
    made = SlabPool(domain, tmp_path)
    yield made
    made.close()


@pytest.fixture
def maps(tmp_path: Path, domain: str) -> Iterator[SlabMaps]:
    made = SlabMaps(domain, tmp_path)
    yield made
    made.close()


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def code_of(exc: pytest.ExceptionInfo[RequestError]) -> str:
    return exc.value.code


# ---- sizing --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 1000, 256 * 1024, MIB - 1, MIB, 3 * MIB + 5, 16 * MIB])
def test_capacity_is_a_power_of_two_with_room_for_request_and_tagged_reply(size: int) -> None:
    capacity = slab_capacity(size)
    assert capacity >= MIB
    assert capacity & (capacity - 1) == 0
    assert size <= capacity // 2  # the request in the lower half
    assert capacity // 2 + TAG_BYTES + size <= capacity  # as large a reply in the upper half
    assert capacity < max(2 * MIB, 4 * (size + TAG_BYTES))  # and no more than twice that


# ---- the frontend's pool -------------------------------------------------------------------
def test_acquire_writes_the_payload_into_a_named_slab(pool: SlabPool, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    slab = pool.acquire(memoryview(payload))
    assert slab is not None
    assert slab.capacity == slab_capacity(len(payload))
    assert shm_transport.NAME_PATTERN.fullmatch(slab.name)
    assert f".{os.getpid()}." in slab.name
    on_disk = tmp_path / slab.name
    assert on_disk.stat().st_size == slab.capacity
    assert on_disk.stat().st_mode & 0o777 == 0o600
    with open(on_disk, "rb") as f:
        assert f.read(len(payload)) == payload
    pool.release(slab, reuse=False)


def test_release_for_reuse_keeps_the_slab_and_gives_it_out_again(
    pool: SlabPool, tmp_path: Path
) -> None:
    first = pool.acquire(b"a" * 300_000)
    assert first is not None
    pool.release(first, reuse=True)
    assert names(tmp_path) == {first.name}
    again = pool.acquire(b"b" * 400_000)  # same capacity: the idle slab, rewritten
    assert again is first
    assert again.map[:400_000] == b"b" * 400_000
    larger = pool.acquire(b"c" * (2 * MIB))  # another capacity: a new slab
    assert larger is not None and larger is not first
    assert names(tmp_path) == {first.name, larger.name}
    pool.release(again, reuse=True)
    pool.release(larger, reuse=True)
    pool.close()
    assert names(tmp_path) == set()


def test_release_without_reuse_unlinks_and_unmaps(pool: SlabPool, tmp_path: Path) -> None:
    slab = pool.acquire(b"x" * 300_000)
    assert slab is not None
    pool.release(slab, reuse=False)
    assert names(tmp_path) == set()
    assert slab.map.closed
    fresh = pool.acquire(b"y" * 300_000)
    assert fresh is not None and fresh is not slab and fresh.name != slab.name
    pool.release(fresh, reuse=False)


def test_idle_slabs_past_the_bound_are_destroyed(
    pool: SlabPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm_transport, "IDLE_MAX_BYTES", 2 * MIB)
    slabs = [pool.acquire(b"z" * 300_000) for _ in range(3)]  # 1 MiB each
    assert all(s is not None for s in slabs)
    for slab in slabs:
        assert slab is not None
        pool.release(slab, reuse=True)
    kept = {s.name for s in slabs[:2] if s is not None}
    assert names(tmp_path) == kept
    assert slabs[2] is not None and slabs[2].map.closed
    # Taking one idle slab frees room under the bound for another to be kept.
    taken = pool.acquire(b"w" * 300_000)
    assert taken is not None and taken.name in kept
    pool.release(taken, reuse=True)
    assert names(tmp_path) == kept


def test_acquire_returns_none_when_no_slab_can_be_made(domain: str, tmp_path: Path) -> None:
    pool = SlabPool(domain, tmp_path / "missing")
    assert pool.acquire(b"q" * 300_000) is None


# ---- the reply region and its tag ----------------------------------------------------------
def test_reply_written_by_the_worker_round_trips(
    pool: SlabPool, maps: SlabMaps, tmp_path: Path
) -> None:
    request = os.urandom(700_000)
    slab = pool.acquire(request)
    assert slab is not None
    mapped, view = maps.map(slab.name, len(request), MAX_BYTES)
    assert bytes(view) == request
    view.release()
    body = os.urandom(slab.capacity // 2 - TAG_BYTES)  # the largest that fits
    assert SlabMaps.write_reply(mapped, 42, [body], len(body))
    assert pool.reply(slab, 42, len(body)) == body
    pool.release(slab, reuse=True)


def test_a_reply_too_large_for_the_region_is_refused(pool: SlabPool, maps: SlabMaps) -> None:
    slab = pool.acquire(b"r" * 300_000)
    assert slab is not None
    mapped, view = maps.map(slab.name, 300_000, MAX_BYTES)
    view.release()
    assert not SlabMaps.write_reply(mapped, 7, [b""], slab.capacity // 2 - TAG_BYTES + 1)
    with pytest.raises(RequestError) as exc:
        pool.reply(slab, 7, slab.capacity // 2)  # a size past the region
    assert code_of(exc) == errors.INTERNAL
    pool.release(slab, reuse=False)


def test_a_stale_writers_reply_is_refused(pool: SlabPool, maps: SlabMaps) -> None:
    slab = pool.acquire(b"s" * 300_000)
    assert slab is not None
    mapped, view = maps.map(slab.name, 300_000, MAX_BYTES)
    view.release()
    assert SlabMaps.write_reply(mapped, 5, [b"mine" * 100_000], 400_000)
    assert SlabMaps.write_reply(mapped, 4, [b"old!" * 100_000], 400_000)  # a worker declared dead
    with pytest.raises(RequestError) as exc:
        pool.reply(slab, 5, 400_000)
    assert code_of(exc) == errors.INTERNAL
    assert "overwritten" in exc.value.message
    pool.release(slab, reuse=False)


class RetaggedWhileCopied(bytearray):
    """A reply region whose tag a stale writer changes while the body is copied out."""

    def __init__(self, size: int, offset: int, stale_tag: bytes) -> None:
        super().__init__(size)
        self.body_start = offset + TAG_BYTES
        self.stale_tag = stale_tag

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, slice) and key.start == self.body_start:
            self[key.start - TAG_BYTES : key.start] = self.stale_tag
        return super().__getitem__(key)


def test_a_tag_changed_during_the_copy_is_refused(pool: SlabPool) -> None:
    capacity = MIB
    region = RetaggedWhileCopied(capacity, capacity // 2, (4).to_bytes(TAG_BYTES, "little"))
    region[capacity // 2 : capacity // 2 + TAG_BYTES] = (5).to_bytes(TAG_BYTES, "little")
    slab = Slab("fake", -1, region, capacity)  # type: ignore[arg-type]
    with pytest.raises(RequestError) as exc:
        pool.reply(slab, 5, 1000)
    assert code_of(exc) == errors.INTERNAL


# ---- the worker's checks before mapping ----------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["", "x", "../etc/passwd", "fsrv.0123.1.abcdef01.1", f"fsrv.{OTHER_DOMAIN}.1.abcdef01.1/.."],
)
def test_names_not_of_slabs_are_refused(maps: SlabMaps, name: str) -> None:
    with pytest.raises(RequestError) as exc:
        maps.map(name, 1, MAX_BYTES)
    assert code_of(exc) == errors.INTERNAL


def test_a_slab_of_another_domain_is_unavailable(
    tmp_path: Path, domain: str, maps: SlabMaps
) -> None:
    other = SlabPool(OTHER_DOMAIN, tmp_path)
    slab = other.acquire(b"o" * 300_000)
    assert slab is not None
    with pytest.raises(RequestError) as exc:
        maps.map(slab.name, 300_000, MAX_BYTES)
    assert code_of(exc) == errors.UNAVAILABLE
    other.release(slab, reuse=False)
    other.close()


def test_a_missing_slab_is_unavailable(maps: SlabMaps, domain: str) -> None:
    with pytest.raises(RequestError) as exc:
        maps.map(f"fsrv.{domain}.1.abcdef01.1", 10, MAX_BYTES)
    assert code_of(exc) == errors.UNAVAILABLE
    assert "gone" in exc.value.message


def test_a_symlink_is_not_followed(
    pool: SlabPool, maps: SlabMaps, tmp_path: Path, domain: str
) -> None:
    slab = pool.acquire(b"l" * 300_000)
    assert slab is not None
    link = f"fsrv.{domain}.1.abcdef01.1"
    (tmp_path / link).symlink_to(tmp_path / slab.name)
    with pytest.raises(RequestError) as exc:
        maps.map(link, 300_000, MAX_BYTES)
    assert code_of(exc) == errors.UNAVAILABLE
    pool.release(slab, reuse=False)


def test_a_fifo_is_not_a_slab(maps: SlabMaps, tmp_path: Path, domain: str) -> None:
    name = f"fsrv.{domain}.1.abcdef01.2"
    os.mkfifo(tmp_path / name, 0o600)
    with pytest.raises(RequestError) as exc:
        maps.map(name, 10, MAX_BYTES)
    assert code_of(exc) == errors.INTERNAL
    assert "not a slab" in exc.value.message


@pytest.mark.parametrize("size", [0, 4096, 3 * MIB, 512 * MIB])
def test_an_object_of_a_wrong_size_is_refused(
    maps: SlabMaps, tmp_path: Path, domain: str, size: int
) -> None:
    name = f"fsrv.{domain}.1.abcdef01.3"
    with open(tmp_path / name, "wb") as f:
        f.truncate(size)  # sparse: no memory taken
    with pytest.raises(RequestError) as exc:
        maps.map(name, 10, MAX_BYTES)  # 512 MiB > 4 * MAX_BYTES
    assert code_of(exc) == errors.INTERNAL
    assert "bad size" in exc.value.message


def test_a_payload_size_past_the_request_half_is_refused(pool: SlabPool, maps: SlabMaps) -> None:
    slab = pool.acquire(b"p" * 300_000)
    assert slab is not None
    for size in (0, slab.capacity // 2 - TAG_BYTES + 1):
        with pytest.raises(RequestError) as exc:
            maps.map(slab.name, size, MAX_BYTES)
        assert code_of(exc) == errors.INTERNAL
    pool.release(slab, reuse=False)


def test_a_slab_stays_mapped_once_and_mappings_of_unlinked_slabs_go(
    pool: SlabPool, maps: SlabMaps
) -> None:
    first = pool.acquire(b"1" * 300_000)
    assert first is not None
    mapped, view = maps.map(first.name, 300_000, MAX_BYTES)
    view.release()
    again, view = maps.map(first.name, 300_000, MAX_BYTES)
    view.release()
    assert again is mapped
    pool.release(first, reuse=False)  # its frontend gave it up: the name is gone
    second = pool.acquire(b"2" * 300_000)
    assert second is not None
    maps.map(second.name, 300_000, MAX_BYTES)[1].release()
    assert list(maps._maps) == [second.name]
    assert mapped.map.closed
    pool.release(second, reuse=False)


def test_mappings_past_the_limit_drop_the_oldest(
    pool: SlabPool, maps: SlabMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm_transport, "MAPS_MAX", 2)
    slabs = [pool.acquire(bytes([i]) * 300_000) for i in range(3)]
    for slab in slabs:
        assert slab is not None
        maps.map(slab.name, 300_000, MAX_BYTES)[1].release()
    assert len(maps._maps) <= 2
    assert slabs[2] is not None and slabs[2].name in maps._maps
    for slab in slabs:
        assert slab is not None
        pool.release(slab, reuse=False)


# ---- sweep and domain ----------------------------------------------------------------------
FRONTEND_CHILD = """
import os, sys
from pathlib import Path
from fabric.shm_transport import SlabPool
pool = SlabPool(sys.argv[1], Path(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    print(pool.acquire(b"d" * 300_000).name, flush=True)
sys.stdin.read()  # lives until the test closes stdin
os._exit(0)  # gone without closing its pool, as if killed
"""


def frontend_process(
    domain: str, shm_dir: Path, slabs: int
) -> tuple[subprocess.Popen[str], set[str]]:
    """Another frontend process holding ``slabs`` slabs until its stdin closes."""
    child = subprocess.Popen(
        [sys.executable, "-c", FRONTEND_CHILD, domain, str(shm_dir), str(slabs)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    made = {child.stdout.readline().strip() for _ in range(slabs)}
    assert all(shm_transport.NAME_PATTERN.fullmatch(n) for n in made), made
    return child, made


def end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    child.stdout.close()


def test_sweep_removes_slabs_of_dead_frontends_only(
    pool: SlabPool, tmp_path: Path, domain: str
) -> None:
    own = pool.acquire(b"m" * 300_000)
    assert own is not None
    live, live_slabs = frontend_process(domain, tmp_path, 1)
    dead, dead_slabs = frontend_process(domain, tmp_path, 2)
    elsewhere, elsewhere_slabs = frontend_process(OTHER_DOMAIN, tmp_path, 1)
    try:
        end(dead)
        end(elsewhere)
        # Left by an unlocking frontend whose pid is alive here (another pid namespace, or
        # its pid reused): no lock, so gone.
        unlocked = f"fsrv.{domain}.{os.getpid()}.abcdef01.1"
        (tmp_path / unlocked).write_bytes(b"u" * 100)
        creating = f"fsrv.{domain}.{os.getpid()}.abcdef01.2"  # made, not locked nor sized yet
        unrelated = f"fsrv.{domain}.{dead.pid}.notours"
        for name in (creating, unrelated):
            (tmp_path / name).write_bytes(b"")
        assert dead_slabs <= names(tmp_path)  # nobody unlinked them: the process just ended
        assert pool.sweep() == 3
        kept = {own.name, *live_slabs, *elsewhere_slabs, creating, unrelated}
        assert names(tmp_path) == kept
        assert pool.sweep() == 0
    finally:
        end(live)
    assert pool.sweep() == 1  # the live one's, now that it is gone too
    assert own.name in names(tmp_path)
    pool.release(own, reuse=False)


def test_sweep_of_a_missing_directory_removes_nothing(domain: str, tmp_path: Path) -> None:
    assert SlabPool(domain, tmp_path / "missing").sweep() == 0


def test_local_domain_is_stable_and_empty_without_a_directory(tmp_path: Path) -> None:
    first = local_domain(tmp_path)
    assert first == local_domain(tmp_path)
    assert all(c in "0123456789abcdef" for c in first) and len(first) == 16
    other = tmp_path / "other"
    other.mkdir()
    assert local_domain(other) != first  # another directory: another domain
    assert local_domain(tmp_path / "missing") == ""
    (tmp_path / "file").write_bytes(b"")
    assert local_domain(tmp_path / "file") == ""
    assert shm_transport.domain_if(False, tmp_path) == ""
    assert shm_transport.domain_if(True, tmp_path) == first


# ---- which models a frontend sends through shared memory -----------------------------------
def catalog(*entries: tuple[str, str, str]) -> CatalogHeader:
    return CatalogHeader(1, len(entries), [CatalogEntry(m, v, b"", 1, d) for m, v, d in entries], 0)


def test_shm_models_are_those_whose_every_version_is_in_our_domain(domain: str) -> None:
    seen = catalog(
        ("local", "1", domain),
        ("local", "2", domain),
        ("mixed", "1", domain),
        ("mixed", "2", ""),
        ("elsewhere", "1", OTHER_DOMAIN),
        ("inline", "1", ""),
    )
    assert shm_models(seen, domain) == frozenset({"local"})
    assert shm_models(seen, OTHER_DOMAIN) == frozenset({"elsewhere"})
    assert shm_models(seen, "") == frozenset()
