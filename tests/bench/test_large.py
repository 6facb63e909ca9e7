"""The large-tensor benchmark's pieces that need no servers: the echo server's response is the
request's inputs, a shared memory request carries no tensor bytes, and the report renders what
a run records.

The echo server and the client build messages with tritonclient's copy of the protos, which
cannot share a process with ours (both define ``inference.DataType``), so those checks run in a
child interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from bench.large import to_markdown

CHILD_CHECKS = textwrap.dedent(
    """
    import numpy as np
    from tritonclient.grpc import service_pb2
    from bench.echo_server import echo
    from bench.large_client import inline_request, shm_request

    x = np.arange(300_000, dtype=np.float32).reshape(1, -1)
    response = service_pb2.ModelInferResponse.FromString(echo(inline_request(x)))
    assert [o.name for o in response.outputs] == ["OUTPUT0"]
    assert list(response.outputs[0].shape) == [1, 300_000]
    assert response.outputs[0].datatype == "FP32"
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], np.float32), x[0]
    )
    big = np.zeros((1, 4 << 20), np.float32)
    data = shm_request(big, "in", "out")
    assert len(data) < 1000, len(data)
    req = service_pb2.ModelInferRequest.FromString(data)
    assert req.inputs[0].parameters["shared_memory_byte_size"].int64_param == big.nbytes
    assert req.outputs[0].parameters["shared_memory_region"].string_param == "out"
    print("ok")
    """
)


def test_echo_and_shm_requests_in_a_child() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_CHECKS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_report_renders_ratios_cpu_and_rss() -> None:
    def point(system: str, payload: int, c: int, rps: float, **extra: object) -> dict:
        return {
            "round": 0, "system": system, "payload_bytes": payload, "concurrency": c,
            "shm": False, "throughput": rps, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0,
            "cpu_ms_per_call": {"frontend": 1.5} if system == "ours" else {"bare": 1.0},
            "peak_rss_mb": {"frontend": 300.0} if system == "ours" else {"bare": 200.0},
            **extra,
        }  # fmt: skip

    mib = 1 << 20
    results = [
        point("bare", mib, 8, 100.0),
        point("ours", mib, 8, 90.0),
        point("ours", 16 * mib, 32, 5.0, rss_point=True),
    ]
    md = to_markdown(results, {"utc": "T", "rounds": 1, "duration_s": 6, "cpus": 2,
                               "loadavg_1m_end": 3.0})  # fmt: skip
    assert "| 1 | 1024 KiB | 8 | 100.0 | 90.0 | 0.90 |" in md
    assert "frontend 300" in md
    assert "| 1 | ours | inline | 1024 KiB | 8 | - | 1.50 |" in md
