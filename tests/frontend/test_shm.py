"""The shared memory registry: names and keys validated, regions checked against the object's
real size, request parameters resolved with Triton's codes and texts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fabric.errors import ALREADY_EXISTS, INTERNAL, INVALID_ARGUMENT, NOT_FOUND, RequestError
from fabric.protocol import ShmRef
from frontend.shm import SharedMemoryRegistry
from frontend.wire import scan_request
from protos import grpc_service_pb2 as pb


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").write_bytes(b"\0" * 1024)
    return tmp_path


@pytest.fixture
def registry(shm_dir: Path) -> SharedMemoryRegistry:
    reg = SharedMemoryRegistry(shm_dir)
    reg.register("in", "/data", 0, 512)
    reg.register("out", "data", 512, 512)
    return reg


def code_and_text(fn: object, *args: object) -> tuple[str, str]:
    with pytest.raises(RequestError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code, info.value.message


def test_register_status_unregister(registry: SharedMemoryRegistry) -> None:
    assert [r.name for r in registry.status("")] == ["in", "out"]
    (out,) = registry.status("out")
    assert (out.key, out.offset, out.byte_size) == ("data", 512, 512)
    assert code_and_text(registry.status, "nope") == (
        NOT_FOUND,
        "Unable to find system shared memory region: 'nope'",
    )
    registry.unregister("in")
    registry.unregister("never registered")  # no error, as in Triton
    assert [r.name for r in registry.status("")] == ["out"]
    registry.unregister("")
    assert registry.status("") == []


@pytest.mark.parametrize(
    ("name", "key", "offset", "size", "code", "text"),
    [
        ("in", "/data", 0, 8, ALREADY_EXISTS, "shared memory region 'in' already in manager"),
        ("x", "/missing", 0, 8, INTERNAL, "Unable to open shared memory region: '/missing'"),
        ("x", "/data", 1000, 100, INVALID_ARGUMENT, "failed to register shared memory region 'x'"),
        ("x", "/data", 0, 0, INVALID_ARGUMENT, "invalid args"),
        ("x", "../etc/passwd", 0, 8, INVALID_ARGUMENT, "invalid shared memory key"),
        ("x", "/..", 0, 8, INVALID_ARGUMENT, "invalid shared memory key"),
        ("x", "/a/b", 0, 8, INVALID_ARGUMENT, "invalid shared memory key"),
        ("x", "", 0, 8, INVALID_ARGUMENT, "invalid shared memory key"),
        ("", "/data", 0, 8, INVALID_ARGUMENT, "invalid shared memory region name"),
        ("bad\nname", "/data", 0, 8, INVALID_ARGUMENT, "invalid shared memory region name"),
        ("x" * 300, "/data", 0, 8, INVALID_ARGUMENT, "invalid shared memory region name"),
    ],
)
def test_register_refuses(
    registry: SharedMemoryRegistry,
    name: str,
    key: str,
    offset: int,
    size: int,
    code: str,
    text: str,
) -> None:
    got_code, got_text = code_and_text(registry.register, name, key, offset, size)
    assert got_code == code and text in got_text


def test_a_symlink_under_dev_shm_is_refused(shm_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 64)
    os.symlink(secret, shm_dir / "link")
    code, text = code_and_text(SharedMemoryRegistry(shm_dir).register, "r", "/link", 0, 8)
    assert code == INTERNAL and text == "Invalid shared memory region: '/link'"


def request(**params: tuple[str, object]) -> bytes:
    req = pb.ModelInferRequest(model_name="m", id="7")
    tensor = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    out = req.outputs.add(name="OUTPUT0")
    for where, kinds in (("in", tensor), ("out", out)):
        for key, (target, value) in params.items():
            if target != where:
                continue
            param = kinds.parameters[key.replace("__", "shared_memory_")]
            if isinstance(value, str):
                param.string_param = value
            else:
                param.int64_param = int(value)  # type: ignore[call-overload]
    return req.SerializeToString()


def test_resolve_gives_the_worker_keys_and_absolute_offsets(
    registry: SharedMemoryRegistry,
) -> None:
    data = request(
        __region=("in", "in"),
        __byte_size=("in", 16),
        __offset=("in", 32),
    )
    route = registry.resolve(scan_request(data), data)
    assert route.shm == (ShmRef("INPUT0", False, "/data", 32, 16),)
    assert route.model == "m" and route.id == "7"
    out = request(__region=("out", "out"), __byte_size=("out", 512))
    assert registry.resolve(scan_request(out), out).shm == (
        ShmRef("OUTPUT0", True, "data", 512, 512),
    )
    plain = request()
    assert registry.resolve(scan_request(plain), plain).shm == ()


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        (
            {"__region": ("in", "nope"), "__byte_size": ("in", 4)},
            NOT_FOUND,
            "Unable to find shared memory region: 'nope'",
        ),
        (
            {"__region": ("in", "in"), "__byte_size": ("in", 4), "__offset": ("in", 512)},
            INVALID_ARGUMENT,
            "Invalid offset for shared memory region: 'in'",
        ),
        (
            {"__region": ("in", "in"), "__byte_size": ("in", 16), "__offset": ("in", 500)},
            INVALID_ARGUMENT,
            "Invalid offset + byte size for shared memory region: 'in'",
        ),
        (
            {"__region": ("in", "in"), "__byte_size": ("in", 4), "__offset": ("in", -1)},
            INVALID_ARGUMENT,
            "Invalid offset for shared memory region: 'in'",
        ),
        (
            {"__region": ("out", "out"), "__byte_size": ("out", 513)},
            INVALID_ARGUMENT,
            "Invalid offset + byte size for shared memory region: 'out'",
        ),
        (
            {"__region": ("in", "in")},
            INVALID_ARGUMENT,
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            "parameter for tensor 'INPUT0'",
        ),
        (
            {"__region": ("in", "in"), "__byte_size": ("in", "16")},
            INVALID_ARGUMENT,
            "invalid value type for 'shared_memory_byte_size' parameter for tensor 'INPUT0', "
            "expected int64_param.",
        ),
    ],
)
def test_resolve_refuses_with_tritons_words(
    registry: SharedMemoryRegistry, params: dict[str, tuple[str, object]], code: str, text: str
) -> None:
    data = request(**params)
    assert code_and_text(registry.resolve, scan_request(data), data) == (code, text)
