"""Asynchronous clients: tritonclient's ``async_infer`` callbacks and ``tritonclient.grpc.aio``."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.integration.helpers import (
    SIMPLE_DIM,
    assert_bytes_outputs,
    assert_int_outputs,
    assert_mlp_output,
    mlp_expected,
    mlp_input,
    rand_fp32,
    rand_int32,
    simple_expected,
    simple_inputs,
    string_expected,
    string_inputs,
)
from tests.integration.stack import Stack

RESULT_TIMEOUT_S = 30.0

Check = Callable[[grpcclient.InferResult], None]


def make_case(index: int, model_repo: Path) -> tuple[str, list[grpcclient.InferInput], Check]:
    """Request ``index``: a model, its inputs and a check of its result (mixed models)."""
    rng = np.random.default_rng(1000 + index)
    kind = index % 3
    if kind == 0:
        batch = 1 + index % 4
        a, b = rand_int32(rng, batch), rand_int32(rng, batch)
        want = simple_expected(a, b)
        return "simple", simple_inputs(a, b), lambda r: assert_int_outputs(r, want)
    if kind == 1:
        a = rng.integers(-(10**5), 10**5, size=(1, SIMPLE_DIM), dtype=np.int32)
        b = rng.integers(-(10**5), 10**5, size=(1, SIMPLE_DIM), dtype=np.int32)
        want_s = string_expected(a, b)
        return "simple_string", string_inputs(a, b), lambda r: assert_bytes_outputs(r, want_s)
    x = rand_fp32(rng, 1 + index % 3)
    want_x = mlp_expected(model_repo, x)
    return "mlp", mlp_input(x), lambda r: assert_mlp_output(r, want_x)


def test_async_infer_callbacks(stack: Stack, model_repo: Path) -> None:
    client = stack.client()
    done: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]]
    done = queue.Queue()

    def callback(result: grpcclient.InferResult | None, error: Any) -> None:
        done.put((result, error))

    count = 24
    checks: dict[str, tuple[str, Check]] = {}
    for i in range(count):
        model, inputs, check = make_case(i, model_repo)
        checks[f"cb-{i}"] = (model, check)
        client.async_infer(model, inputs, callback, request_id=f"cb-{i}", client_timeout=60)

    seen: set[str] = set()
    for _ in range(count):
        result, error = done.get(timeout=RESULT_TIMEOUT_S)
        assert error is None, f"async_infer failed: {error}"
        assert result is not None
        response = result.get_response()
        assert response.id in checks, f"unexpected response id {response.id!r}"
        assert response.id not in seen, f"two responses for {response.id}"
        seen.add(response.id)
        model, check = checks[response.id]
        assert response.model_name == model
        check(result)
    assert seen == set(checks)
    assert done.empty(), "more callbacks than requests"


def test_aio_infer_and_control(stack: Stack, model_repo: Path) -> None:
    cases = [make_case(i, model_repo) for i in range(30)]

    async def main() -> None:
        async with aioclient.InferenceServerClient(stack.frontend.url) as client:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready("simple")
            metadata = await client.get_model_metadata("simple")
            assert metadata.name == "simple"

            async def one(i: int) -> None:
                model, inputs, check = cases[i]
                result = await client.infer(model, inputs, request_id=f"aio-{i}", client_timeout=60)
                response = result.get_response()
                assert response.id == f"aio-{i}"
                assert response.model_name == model
                check(result)

            await asyncio.gather(*(one(i) for i in range(len(cases))))

            with pytest.raises(InferenceServerException) as info:
                await client.infer("no_such_model", cases[0][1])
            assert info.value.status() == "StatusCode.NOT_FOUND"

    asyncio.run(main())


def test_aio_stream_infer(stack: Stack, model_repo: Path) -> None:
    count = 12
    cases = {f"aio-stream-{i}": make_case(i, model_repo) for i in range(count)}

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for request_id, (model, inputs, _) in cases.items():
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

    async def main() -> None:
        async with aioclient.InferenceServerClient(stack.frontend.url) as client:
            responses = client.stream_infer(requests(), stream_timeout=60)
            seen: set[str] = set()
            async for result, error in responses:
                assert error is None, f"stream error: {error}"
                response = result.get_response()
                assert response.id in cases, f"unexpected response id {response.id!r}"
                assert response.id not in seen, f"two responses for {response.id}"
                seen.add(response.id)
                model, _, check = cases[response.id]
                assert response.model_name == model
                check(result)
                if len(seen) == count:
                    break
            assert seen == set(cases)
            responses.cancel()

    asyncio.run(asyncio.wait_for(main(), timeout=60))
