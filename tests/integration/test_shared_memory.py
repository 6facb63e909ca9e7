"""System shared memory through tritonclient's own helpers, as Triton's shm examples use them:
results equal inline results, hostile keys and offsets get clean errors, unregister-all on start
works, and the CUDA RPCs answer as a host without CUDA shared memory should."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bench.tritonshm import shared_memory
from tests.integration.helpers import expect_error
from tests.integration.stack import Stack

shm = shared_memory()


@pytest.fixture
def client(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = stack.client()
    c.unregister_system_shared_memory()  # what Triton's clients do on start
    try:
        yield c
    finally:
        c.unregister_system_shared_memory()
        c.close()


@pytest.fixture
def regions() -> Iterator[list[Any]]:
    handles: list[Any] = []
    yield handles
    for h in handles:
        shm.destroy_shared_memory_region(h)


def make_region(handles: list[Any], byte_size: int) -> tuple[str, Any]:
    key = f"/fabric_test_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
    handles.append(handle)
    return key, handle


def test_unregister_all_on_start_and_cuda_rpcs(client: grpcclient.InferenceServerClient) -> None:
    assert list(client.get_system_shared_memory_status().regions) == []
    client.unregister_system_shared_memory("never-registered")
    assert list(client.get_cuda_shared_memory_status().regions) == []
    client.unregister_cuda_shared_memory()
    exc = expect_error(
        "UNIMPLEMENTED", client.register_cuda_shared_memory, "gpu0", b"\0" * 64, 0, 1024
    )
    assert "CUDA shared memory is not supported" in exc.message()


def test_identity_through_shared_memory_equals_inline(
    client: grpcclient.InferenceServerClient, regions: list[Any]
) -> None:
    x = np.random.default_rng(0).standard_normal((1, 256 * 1024)).astype(np.float32)  # 1 MiB
    in_key, in_handle = make_region(regions, x.nbytes)
    out_key, out_handle = make_region(regions, x.nbytes)
    shm.set_shared_memory_region(in_handle, [x])
    client.register_system_shared_memory("in", in_key, x.nbytes)
    client.register_system_shared_memory("out", out_key, x.nbytes)
    status = client.get_system_shared_memory_status()
    assert sorted(status.regions) == ["in", "out"]
    assert status.regions["in"].key == in_key and status.regions["in"].byte_size == x.nbytes

    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_shared_memory("in", x.nbytes)
    out = grpcclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("out", x.nbytes)
    result = client.infer("identity_fp32", [inp], outputs=[out])
    meta = result.get_output("OUTPUT0")
    assert meta.datatype == "FP32" and list(meta.shape) == [1, x.shape[1]]
    assert result.get_response().raw_output_contents[0] == b""  # no tensor bytes over gRPC
    got = shm.get_contents_as_numpy(out_handle, np.float32, list(meta.shape))

    inline_in = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inline_in.set_data_from_numpy(x)
    inline = client.infer("identity_fp32", [inline_in]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got, inline)
    np.testing.assert_array_equal(got, x)


def test_simple_with_one_input_in_shared_memory_and_one_inline(
    client: grpcclient.InferenceServerClient, regions: list[Any]
) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    key, handle = make_region(regions, 64 + a.nbytes)
    shm.set_shared_memory_region(handle, [a], offset=64)
    client.register_system_shared_memory("ab", key, 64 + a.nbytes)
    in0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    in0.set_shared_memory("ab", a.nbytes, offset=64)
    in1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    in1.set_data_from_numpy(b)
    result = client.infer("simple", [in0, in1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_hostile_keys_offsets_and_names_get_clean_errors(
    stack: Stack, client: grpcclient.InferenceServerClient, regions: list[Any]
) -> None:
    for key in ("../../etc/passwd", "/..", "/a/b"):
        exc = expect_error("INVALID_ARGUMENT", client.register_system_shared_memory, "h", key, 8)
        assert "invalid shared memory key" in exc.message()
    exc = expect_error(
        "INTERNAL", client.register_system_shared_memory, "h", "/fabric_no_such_object", 8
    )
    assert exc.message() == "Unable to open shared memory region: '/fabric_no_such_object'"
    key, _ = make_region(regions, 64)
    exc = expect_error("INVALID_ARGUMENT", client.register_system_shared_memory, "h", key, 128)
    assert exc.message() == "failed to register shared memory region 'h': invalid args"
    client.register_system_shared_memory("r", key, 64)
    exc = expect_error("ALREADY_EXISTS", client.register_system_shared_memory, "r", key, 64)
    assert exc.message() == "shared memory region 'r' already in manager"

    def simple_from(region: str, offset: int) -> None:
        in0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        in0.set_shared_memory(region, 64, offset=offset)
        in1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        in1.set_data_from_numpy(np.zeros((1, 16), np.int32))
        client.infer("simple", [in0, in1])

    exc = expect_error("INVALID_ARGUMENT", simple_from, "r", 4096)
    assert exc.message() == "Invalid offset for shared memory region: 'r'"
    exc = expect_error("INVALID_ARGUMENT", simple_from, "r", 8)
    assert exc.message() == "Invalid offset + byte size for shared memory region: 'r'"
    exc = expect_error("NOT_FOUND", simple_from, "nope", 0)
    assert exc.message() == "Unable to find shared memory region: 'nope'"
    simple_from("r", 0)  # the region itself is fine
    stack.assert_alive()
