"""fabric.malloc: glibc's large-buffer settings, applied unless the operator set MALLOC_*."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from fabric import malloc

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocates and frees a 4 MiB buffer; prints how many more bytes glibc holds in mmapped chunks
# while it is allocated (mallinfo2's hblkhd).
PROBE = """
import ctypes, sys
from fabric.malloc import tune_malloc
applied = tune_malloc()
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
p = libc.malloc(4 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(p)
print(applied, mapped)
"""


def probe(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
    ).stdout.split()
    return out[0] == "True", int(out[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_buffers_come_from_the_heap_once_tuned() -> None:
    applied, mapped = probe(clean_env())
    assert applied is True
    assert mapped == 0  # a 4 MiB chunk is no longer an mmap of its own


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_operators_malloc_variables_win() -> None:
    env = clean_env() | {"MALLOC_ARENA_MAX": "2"}
    applied, mapped = probe(env)
    assert applied is False
    assert mapped >= 4 << 20  # glibc's default: 4 MiB is over its mmap threshold


def test_not_glibc_means_nothing_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert malloc.tune_malloc() is False
