"""Dynamic batching end to end, as Triton defines it: a model with a queue delay and a
preferred batch size answers 4 concurrent calls as one batch of 4, and makes a lone call wait
about its delay for company (its instance is idle, but the model did not opt into
``dispatch_when_idle``)."""

from __future__ import annotations

import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.helpers import assert_mlp_output, mlp_expected, mlp_input, rand_fp32
from tests.integration.stack import Stack

DELAY_S = 0.2
PREFERRED = 4
MODEL = "mlp_delay"
CONFIG = f"""\
name: "{MODEL}"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 256 ] }} ]
dynamic_batching {{
  max_queue_delay_microseconds: {int(DELAY_S * 1e6)}
  preferred_batch_size: [ {PREFERRED} ]
}}
"""


@pytest.fixture
def delay_repo(model_repo: Path, tmp_path: Path) -> Path:
    """A repository holding only ``mlp_delay``: the demo ``mlp`` network behind CONFIG."""
    repo = tmp_path / "delay_repo"
    (repo / MODEL / "1").mkdir(parents=True)
    shutil.copy(model_repo / "mlp" / "1" / "model.pt", repo / MODEL / "1" / "model.pt")
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    return repo


@pytest.mark.timeout(180)
def test_concurrent_calls_batch_together_and_a_lone_call_waits_its_delay(
    make_stack: Callable[[], Stack], delay_repo: Path, model_repo: Path
) -> None:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker(delay_repo)
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready([MODEL])
    client = stack.client()
    rng = np.random.default_rng(7)

    x = rand_fp32(rng, 1)
    started = time.monotonic()
    result = client.infer(MODEL, mlp_input(x), client_timeout=30)
    lone_s = time.monotonic() - started
    assert_mlp_output(result, mlp_expected(model_repo, x))
    assert lone_s >= DELAY_S * 0.9, f"a lone call took {lone_s:.3f}s: it did not wait"

    inputs = [rand_fp32(rng, 1) for _ in range(PREFERRED)]
    done: queue.Queue[tuple[int, float, Any, Any]] = queue.Queue()
    started = time.monotonic()
    for i, xi in enumerate(inputs):
        client.async_infer(
            MODEL,
            mlp_input(xi),
            lambda result, error, i=i: done.put((i, time.monotonic() - started, result, error)),
            client_timeout=30,
        )
    replies = [done.get(timeout=30) for _ in inputs]
    for i, _, result, error in replies:
        assert error is None, error
        assert_mlp_output(result, mlp_expected(model_repo, inputs[i]))

    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    by_size = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert by_size == {1: 1, PREFERRED: 1}, f"executed batches by size: {by_size}"
    assert int(stats["inference_count"]) == 1 + PREFERRED
