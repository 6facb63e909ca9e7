"""Closed-loop client for the large-tensor benchmark: one process, ``concurrency`` coroutines,
each with its own gRPC channel, sending one precomputed ``identity_fp32`` request after another.

Requests are serialized once (identity serializers, responses kept as bytes), so the client does
as little per call as a client can and the servers under test get the CPU. ``--shm`` puts each
coroutine's input and output in system shared memory regions of its own (registered with
tritonclient's helpers first): then no tensor byte crosses gRPC. The first response of every
coroutine is checked byte for byte against its input.

Prints ``window-start`` and ``window-end`` lines when the measurement window opens and closes
(the driver samples CPU there), then one JSON object.

    python -m bench.large_client --url 127.0.0.1:8001 --payload-bytes 1048576 \
        --concurrency 8 --duration 8 --warmup 2 [--shm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

MODEL = "identity_fp32"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + 65536
TIMEOUT_S = 60.0


@dataclass
class ClientResult:
    payload_bytes: int
    concurrency: int
    shm: bool
    requests: int = 0
    errors: int = 0
    throughput: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    window_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)


def data(payload_bytes: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, payload_bytes // 4)).astype(np.float32)


def inline_request(x: np.ndarray) -> bytes:
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return bytes(req.SerializeToString())


def shm_request(x: np.ndarray, region_in: str, region_out: str) -> bytes:
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    tensor.parameters["shared_memory_region"].string_param = region_in
    tensor.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    out = req.outputs.add(name="OUTPUT0")
    out.parameters["shared_memory_region"].string_param = region_out
    out.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    return bytes(req.SerializeToString())


class ShmSetup:
    """Two regions per coroutine, registered with the server; removed on ``close``."""

    def __init__(self, url: str, x: np.ndarray, count: int) -> None:
        import tritonclient.grpc as grpcclient

        from bench.tritonshm import shared_memory

        self.shm = shared_memory()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.unregister_system_shared_memory()
        self.handles: list[Any] = []
        self.requests: list[bytes] = []
        self.outputs: list[Any] = []
        tag = uuid.uuid4().hex[:8]
        for i in range(count):
            names = []
            for kind in ("in", "out"):
                name = f"bench_{kind}_{i}"
                key = f"/fabric_bench_{tag}_{kind}_{i}"
                handle = self.shm.create_shared_memory_region(name, key, x.nbytes)
                self.handles.append(handle)
                if kind == "in":
                    self.shm.set_shared_memory_region(handle, [x])
                else:
                    self.outputs.append(handle)
                self.client.register_system_shared_memory(name, key, x.nbytes)
                names.append(name)
            self.requests.append(shm_request(x, *names))

    def output(self, i: int, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.shm.get_contents_as_numpy(self.outputs[i], np.float32, x.shape)
        return out

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        self.client.close()
        for h in self.handles:
            self.shm.destroy_shared_memory_region(h)


async def run(args: argparse.Namespace) -> ClientResult:
    x = data(args.payload_bytes)
    result = ClientResult(args.payload_bytes, args.concurrency, args.shm)
    setup = ShmSetup(args.url, x, args.concurrency) if args.shm else None
    requests = setup.requests if setup else [inline_request(x)] * args.concurrency
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    latencies: list[float] = []
    start = time.monotonic() + args.warmup
    end = start + args.duration

    async def worker(i: int) -> None:
        async with grpc.aio.insecure_channel(args.url, options=options) as channel:
            call = channel.unary_unary(METHOD)
            checked = False
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    body = await call(requests[i], timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    if t0 >= start:
                        result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(f"{exc.code().name}: {exc.details()}")
                    continue
                t1 = time.monotonic()
                if not checked:
                    checked = True
                    check(body, x, setup, i)
                if start <= t0 and t1 <= end:
                    latencies.append(t1 - t0)

    async def markers() -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        print("window-start", flush=True)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        print("window-end", flush=True)

    try:
        await asyncio.gather(markers(), *(worker(i) for i in range(args.concurrency)))
    finally:
        if setup is not None:
            setup.close()
    result.requests = len(latencies)
    result.window_s = args.duration
    result.throughput = len(latencies) / args.duration
    if latencies:
        ms = np.array(latencies) * 1000
        result.p50_ms = float(np.percentile(ms, 50))
        result.p99_ms = float(np.percentile(ms, 99))
    return result


def check(body: bytes, x: np.ndarray, setup: ShmSetup | None, i: int) -> None:
    response = service_pb2.ModelInferResponse.FromString(body)
    if setup is not None:
        got = setup.output(i, x)
        if any(response.raw_output_contents):
            raise SystemExit("shm response carried tensor bytes")
    else:
        got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(x.shape)
    if not np.array_equal(got, x):
        raise SystemExit("response differs from the input")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--payload-bytes", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--shm", action="store_true")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
