"""Expired and cancelled work never runs.

``slow_deadline`` (max_batch_size 1) sleeps DELAY_MS per request and logs the TAG and start time
of every execution; ``slow_cancel`` does the same with batches of up to 8. A long queue of calls
whose deadline passes, or whose caller cancels them, must leave no trace in the model's log nor
in its statistics: only requests whose caller still waits may start.
"""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.faults.conftest import Chaos
from tests.faults.harness import (
    OK,
    Call,
    FaultStack,
    Request,
    client_close,
    failures,
    status_name,
    tagged_inputs,
    timed_call,
)
from tests.faults.models import executions
from tests.integration.stack import wait_for

MODEL_MS = 200
SHORT_DEADLINE_S = 0.05
CALLS = 60
LATE_TOLERANCE_NS = 75_000_000
"""An execution may start this much after its deadline (checked just before, on a busy machine);
one that waited for another request's 200 ms to pass is at least 150 ms late."""
PROBE_TAG = 1_000_000


def tag_request(tag: int, delay_ms: int) -> Request:
    def check(result: grpcclient.InferResult) -> int:
        out = result.as_numpy("TAG_OUT")
        assert out is not None and out.tolist() == [[tag]], out
        return 0

    return tagged_inputs(tag, delay_ms), check


def execution_counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(executions, successful requests) of ``model`` version 1, summed over workers."""
    (stats,) = [s for s in client.get_inference_statistics(model).model_stats if s.version == "1"]
    return stats.execution_count, stats.inference_stats.success.count


def probe(client: grpcclient.InferenceServerClient, model: str, tag: int = PROBE_TAG) -> None:
    """A call on the same single instance: once it is back, whatever was queued ahead of it has
    run or been dropped."""
    result = client.infer(model, tagged_inputs(tag, 0), client_timeout=30)
    assert result.as_numpy("TAG_OUT").tolist() == [[tag]]


async def wave(url: str, model: str, first_tag: int, timeout_s: float) -> list[tuple[int, Call]]:
    """CALLS concurrent calls of MODEL_MS each, with tags first_tag.., all with ``timeout_s``."""
    client = aioclient.InferenceServerClient(url)
    try:
        tags = range(first_tag, first_tag + CALLS)
        calls = await asyncio.gather(
            *(timed_call(client, model, tag_request(t, MODEL_MS), timeout_s) for t in tags)
        )
    finally:
        await client_close(client)
    return list(zip(tags, calls, strict=True))


def late_starts(
    model_dir: Path, sent: list[tuple[int, Call]], timeout_s: float, wall_minus_mono_ns: int
) -> list[str]:
    """Executions that started after their request's deadline (plus a tolerance)."""
    deadline_ns = {
        tag: int(call.started_s * 1e9) + wall_minus_mono_ns + int(timeout_s * 1e9)
        for tag, call in sent
    }
    return [
        f"tag {tag} started {(start - deadline_ns[tag]) / 1e6:.0f} ms after its deadline"
        for tag, start in executions(model_dir)
        if tag in deadline_ns and start > deadline_ns[tag] + LATE_TOLERANCE_NS
    ]


@pytest.mark.timeout(60)
def test_deadline_shorter_than_model_never_runs(shared_stack: FaultStack, chaos: Chaos) -> None:
    client = shared_stack.client()
    model = "slow_deadline"
    model_dir = shared_stack.model_repository / model  # type: ignore[operator]
    wall_minus_mono_ns = time.time_ns() - int(time.monotonic() * 1e9)
    executions0, _ = execution_counts(client, model)

    # 50 ms deadlines, 200 ms per request, one request at a time.
    short = asyncio.run(wave(shared_stack.frontend.url, model, 1, SHORT_DEADLINE_S))
    probe(client, model)
    executions1, _ = execution_counts(client, model)
    rec = chaos.record(
        f"4 deadline 50 ms vs {MODEL_MS} ms/request model, {CALLS} calls",
        [c for _, c in short],
        notes=f"{executions1 - executions0 - 1} executions",
    )
    assert rec.lost == 0
    assert rec.statuses == {"DEADLINE_EXCEEDED": CALLS}, failures([c for _, c in short], ())
    ran = executions1 - executions0 - 1  # the probe
    assert ran <= CALLS // 10, f"{ran} of {CALLS} expired requests executed"
    logged = [tag for tag, _ in executions(model_dir) if 1 <= tag <= CALLS]
    assert len(logged) == ran, f"statistics say {ran} executions, the model logged {logged}"
    late = late_starts(model_dir, short, SHORT_DEADLINE_S, wall_minus_mono_ns)

    # 250 ms deadlines: the second request starts in time, those after it cannot.
    medium_s = 1.25 * MODEL_MS / 1000
    medium = asyncio.run(wave(shared_stack.frontend.url, model, 1001, medium_s))
    probe(client, model)
    executions2, _ = execution_counts(client, model)
    rec = chaos.record(
        f"4b deadline {medium_s * 1000:.0f} ms vs {MODEL_MS} ms/request model, {CALLS} calls",
        [c for _, c in medium],
        notes=f"{executions2 - executions1 - 1} executions",
    )
    assert rec.lost == 0
    assert set(rec.statuses) <= {OK, "DEADLINE_EXCEEDED"}, rec.statuses
    assert executions2 - executions1 - 1 <= CALLS // 10
    late += late_starts(model_dir, medium, medium_s, wall_minus_mono_ns)
    assert not late, f"requests ran after their deadline: {late}"


CANCELLED_CALLS = 100
LONG_MS = 3000
BATCH_CALLS = 16
BATCH_MS = 100


@pytest.mark.timeout(60)
def test_cancelled_queued_calls_never_run(shared_stack: FaultStack, chaos: Chaos) -> None:
    client = shared_stack.client()
    model = "slow_cancel"
    model_dir = shared_stack.model_repository / model  # type: ignore[operator]
    executions0, success0 = execution_counts(client, model)

    long_tag, first_tag = 2000, 2001
    long_done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer(
        model,
        tagged_inputs(long_tag, LONG_MS),
        lambda result, error: long_done.put((result, error)),
        client_timeout=30,
    )
    wait_for(
        lambda: any(tag == long_tag for tag, _ in executions(model_dir)),
        timeout_s=10,
        what="the long request running",
    )

    ended: queue.Queue[Call] = queue.Queue()

    def callback(started: float, result: Any, error: Any) -> None:
        latency = time.monotonic() - started
        if error is not None:
            ended.put(Call(started, latency, status_name(error), error.message() or ""))
        else:
            ended.put(Call(started, latency, OK, ""))

    handles = []
    for tag in range(first_tag, first_tag + CANCELLED_CALLS):
        sent = time.monotonic()
        handles.append(
            client.async_infer(
                model,
                tagged_inputs(tag, 10),
                lambda result, error, sent=sent: callback(sent, result, error),
                client_timeout=30,
            )
        )
    # A round trip through the same frontend, broker and worker sent after them: once it is
    # back, the queued calls wait in the broker's queue and the worker's inbox.
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    inp.set_data_from_numpy(x)
    assert client.infer("work", [inp], client_timeout=10).as_numpy("OUTPUT0").tolist() == (
        (x * 2 + 1).tolist()
    )
    assert long_done.empty(), "the long request ended before the calls behind it were cancelled"
    for handle in handles:
        handle.cancel()
    calls = [ended.get(timeout=30) for _ in range(CANCELLED_CALLS)]
    _, error = long_done.get(timeout=30)
    assert error is None, f"the long request failed: {error}"
    probe(client, model)
    executions1, success1 = execution_counts(client, model)
    rec = chaos.record(
        f"5 cancel {CANCELLED_CALLS} calls queued behind a {LONG_MS} ms request",
        calls,
        notes=f"{executions1 - executions0 - 2} of them executed",
    )
    assert rec.lost == 0
    assert rec.statuses == {"CANCELLED": CANCELLED_CALLS}, failures(calls, ())
    ran = sorted(
        tag for tag, _ in executions(model_dir) if first_tag <= tag < first_tag + CANCELLED_CALLS
    )
    assert not ran, f"{len(ran)} cancelled calls executed: tags {ran[:10]}"
    assert (executions1 - executions0, success1 - success0) == (2, 2), (
        "statistics count executions other than the long request and the probe"
    )

    # Cancellation gave the worker's credit back: concurrent calls still batch together.
    async def batch_wave() -> list[Call]:
        aio = aioclient.InferenceServerClient(shared_stack.frontend.url)
        try:
            return await asyncio.gather(
                *(
                    timed_call(aio, model, tag_request(tag, BATCH_MS), 10.0)
                    for tag in range(3001, 3001 + BATCH_CALLS)
                )
            )
        finally:
            await client_close(aio)

    after = asyncio.run(batch_wave())
    assert all(c.status == OK for c in after), failures(after)
    executions2, _ = execution_counts(client, model)
    batches = executions2 - executions1
    assert batches <= 6, (
        f"{BATCH_CALLS} concurrent calls ran in {batches} batches: worker credit was lost to "
        "the cancelled calls"
    )
