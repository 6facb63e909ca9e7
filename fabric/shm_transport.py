"""Large payloads between tiers on one host through POSIX shared memory, not ZeroMQ.

A 16 MiB request that crosses the fabric over TCP is copied eight times by the kernels (into
and out of a socket on each of four hops: frontend, broker, worker, broker, frontend), each
time into freshly faulted pages, and costs more CPU than the gRPC call itself. When the
frontend and every worker serving a model share ``/dev/shm`` (same host, same mount, same
user: the same *domain*), the frontend writes the request into a *slab* (a shared memory
object it keeps and reuses) and sends only the slab's name and the request's size; the worker
maps the slab once (and keeps the mapping), reads the request in place, and writes a large
final reply into the slab's upper half. The broker still queues, dispatches, credits and
requeues the message as before; it just carries a name instead of the bytes. In the steady
state no page is faulted or zeroed: every byte is copied once into memory already mapped.

Safety:
- A slab is reused only after its request's final reply arrived. A request given up on
  (cancelled, timed out) takes its slab with it: the name is unlinked and the frontend's
  mapping closed; a worker still running it keeps its own mapping until it lets go.
- The reply region starts with the request id. The frontend checks it before and after
  copying the reply out, so a worker that was declared dead but was still running (its reply
  dropped by the broker) cannot pass its bytes off as another request's answer.
- Every range is reserved with ``posix_fallocate`` before it is written through a mapping:
  a full ``/dev/shm`` is an ``OSError`` (and the payload goes inline), never a SIGBUS. Slabs
  are sparse: only the bytes written take memory (a reused slab's pages stay reserved).
- Names are ``fsrv.<domain>.<pid>.<token>.<n>``: the worker checks the pattern and that the
  domain is its own before opening anything, opens without following links, and checks the
  object is a regular file of its own user. A frontend holds a shared ``flock`` on each of
  its slabs while it lives; when it starts it removes the slabs of its domain that no process
  holds so any more (``sweep``). A lock, not the pid in the name: frontends in other pid
  namespaces (containers sharing ``/dev/shm``) see other pids, and a restarted container's
  frontend often has its predecessor's pid.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import itertools
import mmap
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fabric.errors import INTERNAL, UNAVAILABLE, RequestError

SHM_DIR = Path("/dev/shm")
MIN_BYTES = 256 * 1024
"""Payloads from this size on take shared memory (where it is shared); below it ZeroMQ's
copies cost less than the bookkeeping."""
IDLE_MAX_BYTES = 512 * 1024 * 1024
"""Slab bytes a frontend keeps mapped while no request uses them; past it idle slabs go."""
MAPS_MAX = 256
"""Slabs a worker keeps mapped; past it (or once a slab's name is gone) mappings are dropped."""
TAG_BYTES = 8
NAME_PATTERN = re.compile(r"fsrv\.([0-9a-f]{16})\.([0-9]{1,10})\.[0-9a-f]{8}\.[0-9]{1,20}")


def local_domain(shm_dir: Path = SHM_DIR) -> str:
    """What identifies the shared memory this process sees: the boot, the ``/dev/shm`` mount
    and the user. Processes with the same domain can open each other's objects; "" when there
    is no usable ``/dev/shm``."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        st = os.stat(shm_dir)
    except OSError:
        return ""
    if not stat.S_ISDIR(st.st_mode) or not os.access(shm_dir, os.W_OK | os.X_OK):
        return ""
    raw = f"{boot}:{st.st_dev}:{st.st_ino}:{os.getuid()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def slab_capacity(request_bytes: int) -> int:
    """A power of two holding the request in its lower half and room for a reply (plus its
    tag) at least as large in the upper half."""
    return max(1 << 20, 1 << (2 * (request_bytes + TAG_BYTES) - 1).bit_length())


@dataclass(eq=False)
class Slab:
    name: str
    fd: int
    map: mmap.mmap
    capacity: int
    # Bytes known to be backed from the start of each half (tmpfs keeps them while it lives).
    reserved: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def reply_offset(self) -> int:
        return self.capacity // 2

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # views still out (a worker's model holds its inputs): GC unmaps
            pass
        os.close(self.fd)


# ---- the frontend's side: slabs it owns --------------------------------------------------------
class SlabPool:
    """A frontend's slabs: taken per large request, given back when its final reply came.
    Used on the event loop only."""

    def __init__(self, domain: str, shm_dir: Path = SHM_DIR) -> None:
        self.domain = domain
        self._dir = shm_dir
        self._prefix = f"fsrv.{domain}.{os.getpid()}.{secrets.token_hex(4)}."
        self._numbers = itertools.count(1)
        self._idle: dict[int, list[Slab]] = collections.defaultdict(list)  # by capacity
        self._idle_bytes = 0

    def acquire(self, payload: bytes | memoryview) -> Slab | None:
        """A slab holding ``payload`` at offset 0; None when none can be made."""
        size = len(payload)
        capacity = slab_capacity(size)
        free = self._idle.get(capacity)
        if free:
            slab = free.pop()
            self._idle_bytes -= capacity
        else:
            made = self._make(capacity)
            if made is None:
                return None
            slab = made
        if not _reserve(slab, 0, size):
            self._destroy(slab)
            return None
        slab.map[:size] = payload
        return slab

    def release(self, slab: Slab, reuse: bool) -> None:
        """The slab's request is over; ``reuse`` only when no worker can still write it."""
        if reuse and self._idle_bytes + slab.capacity <= IDLE_MAX_BYTES:
            self._idle[slab.capacity].append(slab)
            self._idle_bytes += slab.capacity
        else:
            self._destroy(slab)

    def reply(self, slab: Slab, request_id: int, size: int) -> bytes:
        """The reply a worker wrote into ``slab`` for ``request_id``, copied out."""
        start = slab.reply_offset
        if start + TAG_BYTES + size > slab.capacity:
            raise RequestError(INTERNAL, f"a {size}-byte reply does not fit its slab")
        tag = request_id.to_bytes(TAG_BYTES, "little")
        mm = slab.map
        # Checked before and after: a stale writer writes its own tag before its body.
        if mm[start : start + TAG_BYTES] == tag:
            body = mm[start + TAG_BYTES : start + TAG_BYTES + size]
            if mm[start : start + TAG_BYTES] == tag:
                return body
        raise RequestError(INTERNAL, "the reply in shared memory was overwritten")

    def close(self) -> None:
        for slabs in self._idle.values():
            for slab in slabs:
                self._destroy(slab)
        self._idle.clear()
        self._idle_bytes = 0

    def sweep(self) -> int:
        """Remove slabs of this domain whose frontend process is gone (no process holds
        their lock); how many."""
        removed = 0
        try:
            names = os.listdir(self._dir)
        except OSError:
            return 0
        for name in names:
            match = NAME_PATTERN.fullmatch(name)
            if match is not None and match.group(1) == self.domain and _abandoned(self._dir / name):
                removed += _unlink(self._dir / name)
        return removed

    def _make(self, capacity: int) -> Slab | None:
        path = self._dir / f"{self._prefix}{next(self._numbers)}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while this process lives (see sweep)
            os.ftruncate(fd, capacity)  # sparse: ranges are reserved as they are written
            mapped = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(fd)
            _unlink(path)
            return None
        return Slab(path.name, fd, mapped, capacity)

    def _destroy(self, slab: Slab) -> None:
        _unlink(self._dir / slab.name)
        slab.close()


# ---- the worker's side: slabs it maps -------------------------------------------------------
class SlabMaps:
    """A worker's mappings of its frontends' slabs, kept while the slab lives. ``map`` runs on
    the I/O thread; ``write_reply`` on any thread."""

    def __init__(self, domain: str, shm_dir: Path = SHM_DIR) -> None:
        self.domain = domain
        self._dir = shm_dir
        self._maps: collections.OrderedDict[str, Slab] = collections.OrderedDict()

    def map(self, name: str, size: int, max_bytes: int) -> tuple[Slab, memoryview]:
        """The slab ``name`` and a view of the request in it (``size`` bytes at 0)."""
        slab = self._maps.get(name)
        if slab is not None:
            self._maps.move_to_end(name)
        else:
            slab = self._open(name, max_bytes)
            self._forget_gone()
            self._maps[name] = slab
        if not 0 < size <= slab.reply_offset - TAG_BYTES:
            raise RequestError(INTERNAL, f"a {size}-byte payload does not fit slab {name}")
        return slab, memoryview(slab.map)[:size]

    @staticmethod
    def write_reply(
        slab: Slab, request_id: int, parts: Sequence[bytes | memoryview], size: int
    ) -> bool:
        """Put the reply (``parts`` in order, ``size`` bytes in all) in the slab's reply
        region, behind the request id; False when it does not fit (then it goes inline)."""
        start = slab.reply_offset
        if start + TAG_BYTES + size > slab.capacity:
            return False
        if not _reserve(slab, 1, TAG_BYTES + size):
            return False
        mm = slab.map
        try:
            mm[start : start + TAG_BYTES] = request_id.to_bytes(TAG_BYTES, "little")
            pos = start + TAG_BYTES
            for part in parts:
                n = len(part)
                mm[pos : pos + n] = part
                pos += n
        except ValueError:  # unmapped meanwhile: its frontend gave the request up
            return False
        return True

    def close(self) -> None:
        for slab in self._maps.values():
            slab.close()
        self._maps.clear()

    def _open(self, name: str, max_bytes: int) -> Slab:
        match = NAME_PATTERN.fullmatch(name)
        if match is None:
            raise RequestError(INTERNAL, f"not a fabric shared memory name: {name!r}")
        if match.group(1) != self.domain:
            raise RequestError(UNAVAILABLE, "the payload is in shared memory not visible here")
        try:
            fd = os.open(self._dir / name, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise RequestError(
                UNAVAILABLE, f"the payload's shared memory {name} is gone ({exc.strerror})"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise RequestError(INTERNAL, f"shared memory {name} is not a slab of ours")
            capacity = st.st_size
            if capacity < 1 << 20 or capacity & (capacity - 1) or capacity > 4 * max_bytes:
                raise RequestError(INTERNAL, f"shared memory {name} has a bad size ({capacity})")
            return Slab(name, fd, mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED), capacity)
        except BaseException:
            os.close(fd)
            raise

    def _forget_gone(self) -> None:
        """Drop mappings of slabs whose name is gone (their frontend let go of them), and the
        oldest past ``MAPS_MAX``: their memory is freed once nothing maps it."""
        for name, slab in list(self._maps.items()):
            try:
                gone = os.fstat(slab.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone or len(self._maps) >= MAPS_MAX:
                del self._maps[name]
                slab.close()


def _reserve(slab: Slab, half: int, size: int) -> bool:
    """Back the first ``size`` bytes of the slab's lower (0) or upper (1) half with memory
    before they are written through the mapping; False when ``/dev/shm`` is full."""
    if size <= slab.reserved[half]:
        return True
    try:
        os.posix_fallocate(slab.fd, half * slab.reply_offset, size)
    except OSError:
        return False
    slab.reserved[half] = size
    return True


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0


def _abandoned(path: Path) -> bool:
    """Whether no process holds the slab's lock: its frontend is gone. An empty one may be
    between its creation and its lock (sized only once locked): it is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size == 0:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its frontend lives
        return False
    finally:
        os.close(fd)
    return True


def domain_if(enabled: bool, shm_dir: Path = SHM_DIR) -> str:
    """This process's domain, or "" when shared memory transport is off or unusable."""
    return local_domain(shm_dir) if enabled else ""
