"""System shared memory on the worker's side: map the object a frontend resolved a region to,
and hand out views of a tensor's bytes in it.

A client on the same host registers a region (a POSIX shared memory object under
``/dev/shm``) with the frontend and names it in a request; the frontend checks the name and the
bounds and sends the worker ``ShmRef``s (object key, absolute offset, size), never a path. The
worker still re-checks what it can see itself: the key is a plain name (no ``/`` inside, not
``.``/``..``), the object is a regular file opened without following symlinks, and the range
lies inside it now (the client may have shrunk or replaced it since registering). Inputs are
read in place (writable views: a model that writes its inputs writes the client's region, as
in Triton); outputs are copied into the region once.

Mappings are cached per key and reused while the object is the same file (device, inode and
size unchanged); a replaced object is mapped afresh. One lock guards the cache: compute threads
of several instances look up regions at once.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from fabric.errors import INVALID_ARGUMENT, NOT_FOUND, RequestError
from fabric.protocol import ShmRef

SHM_DIR = Path("/dev/shm")
KEY_PATTERN = re.compile(r"/?[A-Za-z0-9_.\-]{1,250}")
"""A POSIX shared memory name as ``shm_open`` takes it: an optional leading ``/``, then one
path component."""
CACHE_MAX = 64
"""Mappings kept at once; the least recently added goes first."""

REGION_PARAMETER = "shared_memory_region"
SHM_PARAMETERS = (REGION_PARAMETER, "shared_memory_byte_size", "shared_memory_offset")


def object_name(key: str) -> str:
    """The file name under ``/dev/shm`` of a valid key; raises ValueError for any other key."""
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid shared memory key '{key}'")
    name = key.removeprefix("/")
    if name in (".", ".."):
        raise ValueError(f"invalid shared memory key '{key}'")
    return name


class _Mapping:
    __slots__ = ("identity", "map")

    def __init__(self, identity: tuple[int, int, int], mapped: mmap.mmap) -> None:
        self.identity = identity
        self.map = mapped


class ShmMapper:
    """Views of tensors in shared memory objects, mapped once per object."""

    def __init__(self, shm_dir: Path = SHM_DIR) -> None:
        self._dir = shm_dir
        self._maps: dict[str, _Mapping] = {}
        self._lock = threading.Lock()

    def view(self, ref: ShmRef) -> memoryview:
        """The bytes ``ref`` names, as a writable view of the mapped object."""
        try:
            name = object_name(ref.key)
        except ValueError as exc:
            raise RequestError(INVALID_ARGUMENT, str(exc)) from exc
        path = self._dir / name
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise RequestError(
                INVALID_ARGUMENT, f"Unable to open shared memory region: '{ref.key}'"
            ) from exc
        identity = (st.st_dev, st.st_ino, st.st_size)
        if ref.offset < 0 or ref.byte_size < 0 or ref.offset + ref.byte_size > st.st_size:
            raise RequestError(
                INVALID_ARGUMENT,
                f"shared memory object '{ref.key}' is {st.st_size} bytes, tensor "
                f"'{ref.tensor}' needs bytes {ref.offset}..{ref.offset + ref.byte_size}",
            )
        with self._lock:
            entry = self._maps.get(name)
            if entry is None or entry.identity != identity:
                entry = _Mapping(identity, self._map(path, ref.key))
                if len(self._maps) >= CACHE_MAX:
                    del self._maps[next(iter(self._maps))]  # views keep their own map alive
                self._maps[name] = entry
        return memoryview(entry.map)[ref.offset : ref.offset + ref.byte_size]

    @staticmethod
    def _map(path: Path, key: str) -> mmap.mmap:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise RequestError(
                INVALID_ARGUMENT, f"Unable to open shared memory region: '{key}'"
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                raise RequestError(INVALID_ARGUMENT, f"Invalid shared memory region: '{key}'")
            return mmap.mmap(fd, st.st_size)
        finally:
            os.close(fd)


MAPPER = ShmMapper()
"""The worker process's mappings (``worker.codec`` reads and writes through it)."""


def find_ref(
    name: str, output: bool, parameters: Mapping[str, object], refs: Sequence[ShmRef]
) -> ShmRef | None:
    """The resolved reference for tensor ``name`` when its parameters put it in shared memory,
    None when they do not. A tensor naming a region the frontend did not resolve gets Triton's
    answer for an unknown region."""
    if REGION_PARAMETER not in parameters:
        for key in SHM_PARAMETERS[1:]:
            if key in parameters:  # Triton's text
                raise RequestError(
                    INVALID_ARGUMENT,
                    f"'{key}' can not be specified without 'shared_memory_region' parameter "
                    f"for tensor '{name}'",
                )
        return None
    for ref in refs:
        if ref.tensor == name and ref.output == output:
            return ref
    region = getattr(parameters[REGION_PARAMETER], "string_param", "")
    raise RequestError(NOT_FOUND, f"Unable to find shared memory region: '{region}'")
