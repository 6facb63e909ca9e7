"""Two brokers: the frontend spreads requests over both, the worker registers with both and
splits its credit; losing one broker loses no request."""

from __future__ import annotations

import signal
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .stack import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Stack, free_port, wait_for

pytestmark = pytest.mark.timeout(180)


def _inputs(seed: int) -> tuple[list[grpcclient.InferInput], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-100, 100, (1, 16), dtype=np.int32)
    b = rng.integers(-100, 100, (1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def test_two_brokers_share_the_work_and_survive_losing_one(
    make_stack: Callable[[], Stack],
) -> None:
    stack = make_stack()
    ports = [(free_port(), free_port()) for _ in range(2)]
    brokers = [
        stack._spawn(
            "broker",
            [
                "-m",
                "broker",
                "--frontend-bind",
                f"tcp://127.0.0.1:{fp}",
                "--worker-bind",
                f"tcp://127.0.0.1:{wp}",
                "--heartbeat-interval-s",
                str(HEARTBEAT_INTERVAL_S),
                "--heartbeat-liveness",
                str(HEARTBEAT_LIVENESS),
                "--metrics-port",
                "0",
            ],
        )
        for fp, wp in ports
    ]
    worker_eps = ",".join(f"tcp://127.0.0.1:{wp}" for _, wp in ports)
    frontend_eps = ",".join(f"tcp://127.0.0.1:{fp}" for fp, _ in ports)
    stack._spawn("worker", ["-m", "worker", "--broker", worker_eps,
                            "--model-repository", str(stack.model_repository),
                            "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                            "--device", "cpu"])  # fmt: skip
    port = free_port()
    stack._spawn("frontend", ["-m", "frontend", "--host", "127.0.0.1", "--port", str(port),
                              "--broker", frontend_eps,
                              "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S)],
                 port)  # fmt: skip
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    wait_for(lambda: client.is_model_ready("simple"), timeout_s=90, what="simple ready",
             watch=stack.procs)  # fmt: skip
    # Both brokers must know the worker before the frontend's round robin uses them both.
    wait_for(lambda: "serves" in brokers[1].log_text() and "serves" in brokers[0].log_text(),
             timeout_s=30, what="worker registered with both brokers")  # fmt: skip

    for i in range(40):
        inputs, a, b = _inputs(i)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    stats = client.get_inference_statistics("simple").model_stats[0]
    assert stats.inference_stats.success.count >= 40

    stack.kill(brokers[0], signal.SIGKILL)
    for i in range(40, 80):  # retried through the other broker: none may fail
        inputs, a, b = _inputs(i)
        result = client.infer("simple", inputs, client_timeout=30)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert client.is_model_ready("simple")
