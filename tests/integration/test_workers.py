"""Two workers behind one broker: losing one while requests are in flight loses no request."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.helpers import check_simple
from tests.integration.stack import ALL_MODELS, Stack, wait_for

DELAY_MS = 300
REQUESTS = 16


def sleepy_inputs(delay_ms: int) -> list[grpcclient.InferInput]:
    delay = grpcclient.InferInput("DELAY_MS", [1, 1], "INT32")
    delay.set_data_from_numpy(np.array([[delay_ms]], dtype=np.int32))
    return [delay]


@pytest.mark.timeout(120)
def test_sigkill_one_of_two_workers_in_flight(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_broker()
    workers = [stack.start_worker(), stack.start_worker()]
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(ALL_MODELS)
    # The frontend is ready once one worker serves every model: wait for the second too, or
    # the first may take every request and leave none for the survivor to show.
    wait_for(
        lambda: stack.broker.log_text().count(" joined") >= 2,
        timeout_s=60,
        what="both workers joined the broker",
        watch=stack.procs,
    )
    client = stack.client()

    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    for i in range(REQUESTS):
        # Distinct delays (300..315 ms) so that each answer identifies its request.
        client.async_infer(
            "sleepy",
            sleepy_inputs(DELAY_MS + i),
            lambda result, error: done.put((result, error)),
            request_id=f"k{i}",
            client_timeout=60,
        )
    # Once the first reply is back, both workers are busy with the rest.
    first = done.get(timeout=30)
    stack.kill(workers[1])

    results = [first] + [done.get(timeout=60) for _ in range(REQUESTS - 1)]
    failures = [str(error) for _, error in results if error is not None]
    assert not failures, f"{len(failures)} requests failed after a worker died: {failures[:5]}"
    answers = {
        r.get_response().id: r.as_numpy("OUTPUT0").tolist() for r, _ in results if r is not None
    }
    assert answers == {f"k{i}": [[DELAY_MS + i]] for i in range(REQUESTS)}
    check_simple(client)
    assert workers[0].alive() and stack.broker.alive() and stack.frontend.alive()
