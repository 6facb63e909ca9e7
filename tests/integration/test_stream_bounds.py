"""ModelStreamInfer is bounded: a client that does not read holds the frontend's memory flat,
an idle stream ends after its timeout, and one connection opens a capped number of streams.

Raw gRPC streams (tritonclient's protos) are used where the test must control reading and
half-closing exactly; tritonclient's stream API for the idle case, as a client would see it.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from tests.integration.helpers import (
    mlp_expected,
    rand_fp32,
    rand_int32,
    raw_simple_request,
    raw_stub,
    raw_tensor,
    simple_expected,
)
from tests.integration.stack import Proc, Stack, free_port, wait_for

STALLED_CALLS = 3000
"""mlp calls of [64, 256] FP32 (64 KiB each way) sent on a stream whose responses are not read:
about 190 MiB of responses if the frontend buffered them all."""
RSS_GROWTH_BOUND_MB = 100.0
"""Frontend VmRSS growth allowed while the stream is stalled (the default bound of 64 pending
responses per stream needs about 8 MiB, plus gRPC's flow-control windows)."""
SETTLE_S = 2.0
"""The frontend is done with what it accepted once its success count holds this long."""
IDLE_TIMEOUT_S = 1.0
STREAM_CAP = 2
RESULT_TIMEOUT_S = 60.0


def vm_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"no VmRSS in /proc/{pid}/status"
    return int(match.group(1)) / 1024.0


def mlp_successes(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = r'^nv_inference_request_success\{model="mlp",version="[^"]*"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def mlp_request(x: np.ndarray, request_id: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="mlp", id=request_id)
    request.inputs.append(raw_tensor("INPUT0", "FP32", list(x.shape)))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def start(make_stack: Callable[[], Stack], models: list[str], *frontend_args: str) -> Stack:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_frontend(extra_args=list(frontend_args))
    stack.wait_live()
    stack.wait_ready(models)
    return stack


def test_unread_stream_keeps_frontend_memory_bounded(
    make_stack: Callable[[], Stack], model_repo: Path
) -> None:
    metrics_port = free_port()
    stack = start(make_stack, ["mlp"], "--metrics-port", str(metrics_port))
    frontend: Proc = stack.frontend
    x = rand_fp32(np.random.default_rng(5), 64)
    pulled = 0

    def requests() -> Iterator[service_pb2.ModelInferRequest]:
        nonlocal pulled
        for i in range(STALLED_CALLS):
            pulled = i + 1
            yield mlp_request(x, str(i))

    channel, stub = raw_stub(frontend.url)
    try:
        baseline = vm_rss_mb(frontend.pid)
        responses = stub.ModelStreamInfer(requests(), timeout=600)
        # Not reading ``responses``: wait until the frontend has answered all it accepted.
        peak = baseline
        history: list[tuple[float, int]] = []

        def settled() -> bool:
            nonlocal peak
            peak = max(peak, vm_rss_mb(frontend.pid))
            now, count = time.monotonic(), mlp_successes(metrics_port)
            history.append((now, count))
            older = [c for t, c in history if t <= now - SETTLE_S]
            return count > 0 and bool(older) and older[-1] == count

        wait_for(settled, timeout_s=180.0, what="the frontend to settle", watch=stack.procs)
        accepted = history[-1][1]
        growth = peak - baseline
        assert growth < RSS_GROWTH_BOUND_MB, (
            f"frontend VmRSS grew {growth:.0f} MB ({baseline:.0f} -> {peak:.0f}) while a stream "
            f"went unread; {accepted} of {STALLED_CALLS} calls were answered meanwhile"
        )
        assert accepted < STALLED_CALLS // 2, f"frontend took {accepted} calls of an unread stream"
        assert pulled < STALLED_CALLS, "the client could hand over every request"

        # The client reads now: every call is answered, correctly.
        want = mlp_expected(model_repo, x)
        seen: set[str] = set()
        for response in responses:
            assert not response.error_message, response.error_message
            reply = response.infer_response
            got = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            assert reply.id not in seen, f"two responses for {reply.id}"
            seen.add(reply.id)
            if len(seen) == STALLED_CALLS:
                break
        assert seen == {str(i) for i in range(STALLED_CALLS)}
        responses.cancel()
    finally:
        channel.close()


def sleepy_inputs(delay_ms: int) -> list[grpcclient.InferInput]:
    delay = grpcclient.InferInput("DELAY_MS", [1, 1], "INT32")
    delay.set_data_from_numpy(np.array([[delay_ms]], dtype=np.int32))
    return [delay]


def test_idle_stream_ends_after_timeout_but_busy_one_does_not(
    make_stack: Callable[[], Stack],
) -> None:
    stack = start(make_stack, ["sleepy"], "--stream-idle-timeout-s", str(IDLE_TIMEOUT_S))
    client = stack.client()
    events: queue.Queue[tuple[Any, Any, float]] = queue.Queue()
    client.start_stream(lambda result, error: events.put((result, error, time.monotonic())))
    try:
        # In flight for twice the idle timeout: a busy stream is not idle.
        delay_ms = int(IDLE_TIMEOUT_S * 2000)
        client.async_stream_infer("sleepy", sleepy_inputs(delay_ms), request_id="busy")
        result, error, answered_at = events.get(timeout=RESULT_TIMEOUT_S)
        assert error is None, f"busy stream failed: {error}"
        assert result.get_response().id == "busy"

        _, error, ended_at = events.get(timeout=RESULT_TIMEOUT_S)
        assert error is not None, "idle stream got a response instead of ending"
        assert "DEADLINE_EXCEEDED" in str(error.status()), error
        assert "idle" in error.message(), error
        assert ended_at - answered_at >= IDLE_TIMEOUT_S * 0.8
    finally:
        client.stop_stream(cancel_requests=True)


class RawStream:
    """One ModelStreamInfer on a shared channel: requests fed from a queue, responses read by
    a thread into another queue."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.outbox: queue.Queue[service_pb2.ModelInferRequest | None] = queue.Queue()
        self.inbox: queue.Queue[Any] = queue.Queue()
        method = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        self.call = method(iter(self.outbox.get, None), timeout=120)
        self.reader = threading.Thread(target=self._read, daemon=True, name="raw-stream-reader")
        self.reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.inbox.put(response)
        except grpc.RpcError as exc:
            self.inbox.put(exc)
        else:
            self.inbox.put(None)  # the server ended the stream with OK

    def simple(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        a, b = rand_int32(rng, 1), rand_int32(rng, 1)
        self.outbox.put(raw_simple_request(a, b))
        return simple_expected(a, b)

    def close(self) -> None:
        self.outbox.put(None)  # half-close: the server ends the stream once it has answered


def test_streams_per_connection_are_capped(make_stack: Callable[[], Stack]) -> None:
    stack = start(make_stack, ["simple"], "--max-concurrent-streams", str(STREAM_CAP))
    channel = grpc.insecure_channel(stack.frontend.url)
    streams: list[RawStream] = []
    try:
        for i in range(STREAM_CAP):
            streams.append(RawStream(channel))
            streams[-1].simple(i)
            first = streams[-1].inbox.get(timeout=RESULT_TIMEOUT_S)
            assert not isinstance(first, Exception), f"stream {i}: {first}"
            assert not first.error_message, first.error_message

        extra = RawStream(channel)
        streams.append(extra)
        extra.simple(99)
        # gRPC clients queue a stream past the server's SETTINGS_MAX_CONCURRENT_STREAMS.
        try:
            early = extra.inbox.get(timeout=2.0)
        except queue.Empty:
            early = None
        assert early is None, f"stream {STREAM_CAP + 1} ran past the cap: {early}"

        streams[0].close()
        ended = streams[0].inbox.get(timeout=RESULT_TIMEOUT_S)
        assert ended is None, f"closed stream did not end with OK: {ended}"
        late = extra.inbox.get(timeout=RESULT_TIMEOUT_S)
        assert not isinstance(late, Exception), f"queued stream failed: {late}"
        assert not late.error_message, late.error_message
    finally:
        for stream in streams:
            stream.call.cancel()
        channel.close()
