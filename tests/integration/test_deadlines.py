"""Deadlines and cancellation flow to the worker: queued work whose caller gave up never runs.

``sleepy`` has one instance and no dynamic batching. A long request occupies it; requests
queued behind it either time out or are cancelled by their caller. Statistics then show that the
model ran only the requests that still had a caller.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.helpers import check_simple
from tests.integration.stack import Stack

LONG_MS = 1500
QUEUED = 4
ROUNDS = 4
PER_ROUND = 16
"""64 abandoned requests in all: more than ``sleepy``'s capacity (credit) on a worker."""
IDLE_EXIT_WITHIN_S = 3.0

Done = queue.Queue[tuple[Any, Any]]


def sleepy_inputs(delay_ms: int) -> list[grpcclient.InferInput]:
    delay = grpcclient.InferInput("DELAY_MS", [1, 1], "INT32")
    delay.set_data_from_numpy(np.array([[delay_ms]], dtype=np.int32))
    return [delay]


def sleepy_counts(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    """(successful requests, model executions) of ``sleepy``."""
    response = client.get_inference_statistics("sleepy")
    (stats,) = [s for s in response.model_stats if s.version == "1"]
    return stats.inference_stats.success.count, stats.execution_count


def occupy(client: grpcclient.InferenceServerClient, delay_ms: int = LONG_MS) -> Done:
    """Start the long request, and make sure it has reached the worker before returning: a
    round trip sent after it through the same frontend, broker and worker has come back."""
    done: Done = queue.Queue()
    client.async_infer(
        "sleepy",
        sleepy_inputs(delay_ms),
        lambda result, error: done.put((result, error)),
        request_id="long",
        client_timeout=30,
    )
    check_simple(client)
    return done


def finish(client: grpcclient.InferenceServerClient, done: Done, delay_ms: int = LONG_MS) -> None:
    """Wait for the long request, then run a probe on the same instance: anything wrongly left
    queued ahead of the probe has run by the time the probe's answer is back."""
    result, error = done.get(timeout=30)
    assert error is None, f"long request failed: {error}"
    assert result.as_numpy("OUTPUT0").tolist() == [[delay_ms]]
    probe = client.infer("sleepy", sleepy_inputs(0), client_timeout=30)
    assert probe.as_numpy("OUTPUT0").tolist() == [[0]]


@pytest.mark.timeout(60)
def test_expired_requests_never_run(stack: Stack) -> None:
    client = stack.client()
    success0, executions0 = sleepy_counts(client)
    done = occupy(client)
    expired: queue.Queue[Any] = queue.Queue()
    for i in range(QUEUED):
        client.async_infer(
            "sleepy",
            sleepy_inputs(10 + i),
            lambda result, error: expired.put((result, error)),
            request_id=f"short-{i}",
            client_timeout=0.3,
        )
    for _ in range(QUEUED):
        result, error = expired.get(timeout=30)
        assert result is None and error is not None, "a request queued behind 1.5 s succeeded"
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
    finish(client, done)
    success1, executions1 = sleepy_counts(client)
    assert success1 - success0 == 2, "the long request and the probe"
    assert executions1 - executions0 == 2, "requests whose deadline passed in a queue ran"


@pytest.mark.timeout(60)
def test_cancelled_requests_never_run(stack: Stack) -> None:
    client = stack.client()
    success0, executions0 = sleepy_counts(client)
    done = occupy(client)
    cancelled: queue.Queue[Any] = queue.Queue()
    calls = [
        client.async_infer(
            "sleepy",
            sleepy_inputs(20 + i),
            lambda result, error: cancelled.put((result, error)),
            request_id=f"cancel-{i}",
            client_timeout=30,
        )
        for i in range(QUEUED)
    ]
    # Once this round trip is back, the queued requests have been forwarded and wait in a
    # queue behind the long one: cancelling them there is what is tested.
    check_simple(client)
    for call in calls:
        call.cancel()
    for _ in range(QUEUED):
        result, error = cancelled.get(timeout=30)
        assert result is None and error is not None, "a cancelled request succeeded"
        assert error.status() == "StatusCode.CANCELLED", error
    finish(client, done)
    success1, executions1 = sleepy_counts(client)
    assert success1 - success0 == 2, "the long request and the probe"
    assert executions1 - executions0 == 2, "cancelled requests ran anyway"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["cancel", "expire"])
def test_abandoned_requests_release_their_slot(make_stack: Callable[[], Stack], how: str) -> None:
    """Requests dropped from a queue (cancelled or expired) give back the credit they held:
    after many more of them than any model's capacity, the model still serves at once, and
    the worker has nothing left to drain when told to stop."""
    stack = make_stack()
    stack.start_broker()
    worker = stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["sleepy", "simple"])
    client = stack.client()

    # Long enough that the dropped requests are surely queued behind it even on a loaded
    # machine (a slow round trip in ``occupy`` once let the model go idle before they came).
    hold_ms = 1500
    for round_ in range(ROUNDS):
        done = occupy(client, delay_ms=hold_ms)
        dropped: queue.Queue[Any] = queue.Queue()
        calls = [
            client.async_infer(
                "sleepy",
                sleepy_inputs(1),
                lambda result, error, dropped=dropped: dropped.put((result, error)),
                request_id=f"{how}-{round_}-{i}",
                client_timeout=0.2 if how == "expire" else 30,
            )
            for i in range(PER_ROUND)
        ]
        check_simple(client)
        if how == "cancel":
            for call in calls:
                call.cancel()
        for _ in range(PER_ROUND):
            result, error = dropped.get(timeout=30)
            assert result is None and error is not None
        finish(client, done, delay_ms=hold_ms)

    result = client.infer("sleepy", sleepy_inputs(7), client_timeout=10)
    assert result.as_numpy("OUTPUT0").tolist() == [[7]]

    os.kill(worker.pid, signal.SIGTERM)
    try:
        code = worker.popen.wait(timeout=IDLE_EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, (
        f"idle worker not gone {IDLE_EXIT_WITHIN_S}s after SIGTERM (exit {code}): "
        f"requests {how}ed in its queue were never released:\n{worker.tail(6)}"
    )
