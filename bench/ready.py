"""Readiness of a system under test through the public API, and one request to check it answers.

Both speak KServe v2 over gRPC (``tritonclient.grpc``), so they work the same against our stack,
the bare server and the peers.
"""

from __future__ import annotations

import time

from bench.lifecycle import Proc, StackError

READY_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.2


def wait_ready(
    url: str,
    procs: list[Proc],
    models: list[str],
    timeout: float = READY_TIMEOUT_S,
    headers: dict[str, str] | None = None,
) -> float:
    """Block until the server at ``url`` says every model is ready; seconds it took."""
    import tritonclient.grpc as grpcclient

    t0 = time.monotonic()
    client = grpcclient.InferenceServerClient(url)
    last = ""
    try:
        while time.monotonic() - t0 < timeout:
            for p in procs:
                if not p.alive():
                    raise StackError(
                        f"{p.name} exited with {p.popen.returncode} before ready:\n{p.log_tail()}"
                    )
            try:
                if client.is_server_live(headers=headers, client_timeout=1) and all(
                    client.is_model_ready(m, headers=headers, client_timeout=1) for m in models
                ):
                    return time.monotonic() - t0
                last = "not ready yet"
            except Exception as exc:
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
            time.sleep(POLL_INTERVAL_S)
    finally:
        client.close()
    tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs)
    raise StackError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tails}")


def sanity_check(
    url: str, model: str, width: int, headers: dict[str, str] | None = None
) -> str | None:
    """One request; None if the reply is an FP32 [1, width] OUTPUT0, else what was wrong."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1, width], "FP32")
        inp.set_data_from_numpy(np.ones((1, width), np.float32))
        out = client.infer(model, [inp], headers=headers, client_timeout=10).as_numpy("OUTPUT0")
        if out is None or out.shape != (1, width) or out.dtype != np.float32:
            return f"{model}: unexpected OUTPUT0: {None if out is None else (out.shape, out.dtype)}"
        if not np.isfinite(out).all():
            return f"{model}: OUTPUT0 has non-finite values"
        return None
    except Exception as exc:
        return f"{model}: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()
