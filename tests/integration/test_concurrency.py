"""Many concurrent requests from several clients: each gets its own answer, none is lost.

Distinct random inputs per request make any mix-up between requests (wrong split of a dynamic
batch, replies routed to the wrong caller) show up as a wrong answer.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.integration.helpers import (
    assert_int_outputs,
    assert_mlp_output,
    mlp_expected,
    mlp_input,
    rand_fp32,
    rand_int32,
    simple_expected,
    simple_inputs,
)
from tests.integration.stack import Stack

CLIENTS = 4
REQUESTS = 500


def mlp_counts(client: grpcclient.InferenceServerClient) -> tuple[int, int, int]:
    """(successful requests, inferences = batch rows, executions = model runs) of ``mlp``."""
    (stats,) = [s for s in client.get_inference_statistics("mlp").model_stats if s.version == "1"]
    return stats.inference_stats.success.count, stats.inference_count, stats.execution_count


@pytest.mark.timeout(150)
def test_500_concurrent_requests_aio(stack: Stack, model_repo: Path) -> None:
    """Half ``simple``, half ``mlp`` (dynamic batching): all in flight at once from 4 clients.
    ``mlp`` must have merged requests into batches, and split the results back correctly."""
    per_client = REQUESTS // CLIENTS
    rng = np.random.default_rng(42)
    # Inputs and answers drawn up front, so every request has its own.
    cases: list[tuple[str, list[grpcclient.InferInput], Any]] = []
    mlp_rows = 0
    for i, batch in enumerate(rng.integers(1, 5, size=REQUESTS)):
        if i % 2 == 0:
            a, b = rand_int32(rng, int(batch)), rand_int32(rng, int(batch))
            cases.append(("simple", simple_inputs(a, b), simple_expected(a, b)))
        else:
            x = rand_fp32(rng, int(batch))
            cases.append(("mlp", mlp_input(x), mlp_expected(model_repo, x)))
            mlp_rows += int(batch)
    mlp_requests = sum(1 for model, _, _ in cases if model == "mlp")
    before = mlp_counts(stack.client())

    async def client_task(c: int) -> int:
        async with aioclient.InferenceServerClient(stack.frontend.url) as client:

            async def one(i: int) -> None:
                model, inputs, want = cases[i]
                result = await client.infer(model, inputs, request_id=f"r{i}", client_timeout=120)
                assert result.get_response().id == f"r{i}"
                if model == "mlp":
                    assert_mlp_output(result, want)
                else:
                    assert_int_outputs(result, want)

            indices = range(c * per_client, (c + 1) * per_client)
            await asyncio.gather(*(one(i) for i in indices))
            return len(indices)

    async def main() -> int:
        counts = await asyncio.gather(*(client_task(c) for c in range(CLIENTS)))
        return sum(counts)

    started = time.monotonic()
    assert asyncio.run(main()) == REQUESTS
    print(f"{REQUESTS} concurrent requests in {time.monotonic() - started:.2f}s")

    success, inferences, executions = (
        after - prior for after, prior in zip(mlp_counts(stack.client()), before, strict=True)
    )
    assert success == mlp_requests
    assert inferences == mlp_rows
    assert executions < mlp_requests, "no dynamic batching happened under 250 concurrent mlp calls"
    assert executions >= -(-mlp_rows // 64), "batches larger than max_batch_size 64"


@pytest.mark.timeout(150)
def test_concurrent_threads_mixed_models(stack: Stack, model_repo: Path) -> None:
    """Threads, each with its own sync client, keep several async_infer calls in flight."""
    per_thread = 50
    errors: queue.Queue[str] = queue.Queue()

    def worker(t: int) -> None:
        client = grpcclient.InferenceServerClient(stack.frontend.url)
        try:
            rng = np.random.default_rng(500 + t)
            done: queue.Queue[tuple[Any, Any]] = queue.Queue()
            expected: dict[str, tuple[str, Any]] = {}
            for i in range(per_thread):
                request_id = f"t{t}-{i}"
                if i % 5 == 4:
                    x = rand_fp32(rng, 1 + i % 3)
                    expected[request_id] = ("mlp", mlp_expected(model_repo, x))
                    inputs = mlp_input(x)
                    model = "mlp"
                else:
                    batch = 1 + i % 3
                    a, b = rand_int32(rng, batch), rand_int32(rng, batch)
                    expected[request_id] = ("simple", simple_expected(a, b))
                    inputs = simple_inputs(a, b)
                    model = "simple"
                client.async_infer(
                    model,
                    inputs,
                    lambda result, error: done.put((result, error)),
                    request_id=request_id,
                    client_timeout=120,
                )
            for _ in range(per_thread):
                result, error = done.get(timeout=120)
                if error is not None:
                    errors.put(f"thread {t}: {error}")
                    continue
                request_id = result.get_response().id
                model, want = expected.pop(request_id)
                if model == "mlp":
                    assert_mlp_output(result, want)
                else:
                    assert_int_outputs(result, want)
            if expected:
                errors.put(f"thread {t}: no answer for {sorted(expected)}")
        except BaseException as exc:  # reported to the test thread below
            errors.put(f"thread {t}: {exc!r}")
        finally:
            client.close()

    # Load the reference model once before the threads race for it.
    mlp_expected(model_repo, np.zeros((1, 256), dtype=np.float32))
    threads = [threading.Thread(target=worker, args=(t,), name=f"client-{t}") for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=140)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures[:20])
