"""grpc.health.v1 tells the truth: NOT_SERVING within a few seconds when the only worker hangs
(SIGSTOP) or the broker dies (SIGKILL), SERVING again after SIGCONT or a broker restart; and
ServerReady agrees with it."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faults.conftest import Chaos
from tests.faults.harness import OK, Call, FaultStack, work_request
from tests.integration.stack import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

DETECT_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
WITHIN_S = DETECT_S + 3.0
"""A change of state shows in the health status within this long."""
RECOVER_S = 6.0
"""After the new broker listens: the worker's reconnect backoff adds to the heartbeat."""
CHECK_TIMEOUT_S = 2.0
SERVICES = ("", "inference.GRPCInferenceService")
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"


class HealthProbe:
    def __init__(self, url: str) -> None:
        self.channel = grpc.insecure_channel(url)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.calls: list[Call] = []

    def close(self) -> None:
        self.channel.close()

    def status(self) -> str:
        """The status of every service when they agree, else "MIXED"."""
        seen = set()
        for service in SERVICES:
            started = time.monotonic()
            try:
                response = self.stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=CHECK_TIMEOUT_S
                )
            except grpc.RpcError as err:
                self.calls.append(Call(started, time.monotonic() - started, err.code().name))
                seen.add(f"error {err.code().name}")
                continue
            self.calls.append(Call(started, time.monotonic() - started, OK))
            seen.add(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        return seen.pop() if len(seen) == 1 else "MIXED"

    def wait(self, want: str, within_s: float, what: str) -> float:
        """Seconds until the status is ``want``; fails after ``within_s``."""
        started = time.monotonic()
        while True:
            status = self.status()
            elapsed = time.monotonic() - started
            if status == want:
                return elapsed
            assert elapsed < within_s, f"health still {status} {elapsed:.1f}s after {what}"
            time.sleep(0.05)


@pytest.mark.timeout(90)
def test_health_follows_worker_and_broker(
    make_stack: Callable[[], FaultStack], chaos: Chaos
) -> None:
    stack = make_stack()
    stack.start_broker()
    worker = stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["work"])
    client = stack.client()
    probe = HealthProbe(stack.frontend.url)
    times: dict[str, float] = {}
    try:
        probe.wait(SERVING, WITHIN_S, "start")
        stack.suspend(worker)
        times["NOT_SERVING after SIGSTOP"] = probe.wait(NOT_SERVING, WITHIN_S, "SIGSTOP")
        assert not client.is_server_ready(client_timeout=2), "ServerReady with no live worker"
        stack.resume(worker)
        times["SERVING after SIGCONT"] = probe.wait(SERVING, WITHIN_S, "SIGCONT")
        assert client.is_server_ready(client_timeout=2)
        stack.kill(stack.broker)
        times["NOT_SERVING after broker SIGKILL"] = probe.wait(NOT_SERVING, WITHIN_S, "SIGKILL")
        assert not client.is_server_ready(client_timeout=2), "ServerReady without a broker"
        stack.restart_broker()
        times["SERVING after broker restart"] = probe.wait(SERVING, RECOVER_S, "restart")
        assert client.is_server_ready(client_timeout=2)
        inputs, check = work_request(np.random.default_rng(0))
        check(client.infer("work", inputs, client_timeout=10))
    finally:
        probe.close()
        chaos.record(
            "8 health: SIGSTOP/SIGCONT the only worker, SIGKILL/restart the broker",
            probe.calls,
            notes="; ".join(f"{k} {v:.1f}s" for k, v in times.items()),
        )
    assert all(c.status == OK for c in probe.calls), "health checks failed"
    assert max(c.latency_s for c in probe.calls) < CHECK_TIMEOUT_S
    stack.assert_alive()
