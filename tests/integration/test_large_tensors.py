"""Large tensors end to end: megabytes inline come back byte-exact (through the zero-copy
fabric path, concurrently), and the one message size limit is enforced alike by every tier with
an error that names it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bench.tritonshm import shared_memory
from tests.integration.helpers import check_simple, expect_error
from tests.integration.stack import Stack

MIB = 1024 * 1024


def identity_input(x: np.ndarray) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def test_megabytes_inline_come_back_exact_under_concurrency(stack: Stack) -> None:
    client = stack.client()
    big = np.random.default_rng(0).standard_normal((1, 16 * MIB // 4)).astype(np.float32)
    np.testing.assert_array_equal(
        client.infer("identity_fp32", identity_input(big)).as_numpy("OUTPUT0"), big
    )
    inputs = [np.full((1, MIB // 4 * (1 + i % 3)), i, np.float32) for i in range(12)]

    def call(x: np.ndarray) -> np.ndarray:
        c = stack.client()
        try:
            out: np.ndarray = c.infer("identity_fp32", identity_input(x)).as_numpy("OUTPUT0")
            return out
        finally:
            c.close()

    with ThreadPoolExecutor(6) as pool:
        for x, got in zip(inputs, pool.map(call, inputs), strict=True):
            np.testing.assert_array_equal(got, x)
    check_simple(client)


@pytest.mark.timeout(240)
def test_one_message_size_limit_for_every_tier(make_stack: Callable[[], Stack]) -> None:
    limit = MIB
    args = ["--max-message-bytes", str(limit)]
    stack = make_stack()
    stack.start_broker(extra_args=args)
    stack.start_worker(extra_args=args)
    stack.start_frontend(extra_args=args)
    stack.wait_ready(["identity_fp32", "simple"])
    client = stack.client()

    exc = expect_error(
        "RESOURCE_EXHAUSTED",
        client.infer,
        "identity_fp32",
        identity_input(np.zeros((1, MIB // 2), np.float32)),
    )
    assert str(limit) in exc.message()  # grpc: "larger than max (N vs. 1048576)"

    # A response over the limit (its request came through shared memory) is refused by the
    # worker, never sent to break a ZeroMQ connection.
    shm = shared_memory()
    x = np.ones((1, MIB // 2), np.float32)  # 2 MiB of output
    key = f"/fabric_test_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.strip("/"), key, x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("big", key, x.nbytes)
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_shared_memory("big", x.nbytes)
        exc = expect_error("RESOURCE_EXHAUSTED", client.infer, "identity_fp32", [inp])
        assert exc.message().startswith("response of ")
        assert exc.message().endswith(
            f"bytes exceeds the message size limit of {limit} bytes "
            "(--max-message-bytes, FABRIC_MAX_MESSAGE_BYTES)"
        )
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle)

    small = np.ones((1, MIB // 8), np.float32)  # 512 KiB: under the limit, zero-copy path
    np.testing.assert_array_equal(
        client.infer("identity_fp32", identity_input(small)).as_numpy("OUTPUT0"), small
    )
    check_simple(client)
    stack.assert_alive()
