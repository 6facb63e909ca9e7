"""Closed-loop gRPC load generator for an MLP-shaped model, spread over several client processes.

Each of ``processes`` child processes runs ``concurrency / processes`` coroutines; every coroutine
owns its own ``tritonclient.grpc.aio`` client and sends one ModelInfer (INPUT0, FP32 [1, width],
width 256 unless told, fixed-seed random data; optional gRPC metadata) after another. All
children share one measurement window on the system-wide monotonic clock: a warm-up first, then
``duration`` seconds in which every completed request's latency and every error is recorded.
Throughput counts requests that completed inside the window.

Library::

    result = run_load("127.0.0.1:8001", concurrency=64, duration=10)

CLI (prints JSON)::

    python -m bench.loadgen --url 127.0.0.1:8001 --model mlp --concurrency 64 --duration 10 \
        [--width 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue as queue_mod
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

WIDTH = 256
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class LoadResult:
    """What one closed-loop run measured (latencies in milliseconds)."""

    url: str
    model: str
    concurrency: int
    processes: int
    duration_s: float
    warmup_s: float
    requests: int = 0
    errors: int = 0
    throughput: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    total_requests: int = 0  # every completed request, warm-up and tail included
    setup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _split(concurrency: int, processes: int) -> list[int]:
    processes = max(1, min(processes, concurrency))
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def _make_inputs(grpcclient, seed: int, width: int = WIDTH):
    data = np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, width], "FP32")
    inp.set_data_from_numpy(data)
    return [inp]


async def _child_main(
    url: str,
    model: str,
    n_coroutines: int,
    seed: int,
    ready_q,
    start_evt,
    start_at,
    warmup: float,
    duration: float,
    width: int = WIDTH,
    headers: dict[str, str] | None = None,
) -> dict:
    import tritonclient.grpc.aio as aioclient

    clients = [aioclient.InferenceServerClient(url) for _ in range(n_coroutines)]
    inputs = [_make_inputs(aioclient, seed * 1000 + i, width) for i in range(n_coroutines)]
    setup_errors = 0
    samples: list[str] = []

    async def first(i: int) -> None:
        nonlocal setup_errors
        try:
            await clients[i].infer(
                model, inputs[i], client_timeout=REQUEST_TIMEOUT_S, headers=headers
            )
        except Exception as exc:
            setup_errors += 1
            if len(samples) < 5:
                samples.append(f"setup: {type(exc).__name__}: {exc}"[:300])

    await asyncio.gather(*(first(i) for i in range(n_coroutines)))
    ready_q.put(("ready", setup_errors))
    # Blocking here is fine: nothing else runs until the shared start time is known.
    await asyncio.get_running_loop().run_in_executor(None, start_evt.wait)
    t_start = start_at.value + warmup
    t_end = t_start + duration
    now = time.monotonic()
    if now < start_at.value:
        await asyncio.sleep(start_at.value - now)

    latencies: list[float] = []
    errors = 0
    total = 0

    async def worker(i: int) -> None:
        nonlocal errors, total
        client, inp = clients[i], inputs[i]
        perf, mono = time.perf_counter, time.monotonic
        while True:
            t0 = perf()
            try:
                await client.infer(model, inp, client_timeout=REQUEST_TIMEOUT_S, headers=headers)
                ok = True
            except Exception as exc:
                ok = False
                err = exc
            lat = perf() - t0
            done = mono()
            if done >= t_end:
                break
            total += 1
            if done < t_start:
                continue
            if ok:
                latencies.append(lat)
            else:
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{type(err).__name__}: {err}"[:300])
                await asyncio.sleep(0.001)  # do not spin on a server that fails at once

    await asyncio.gather(*(worker(i) for i in range(n_coroutines)))
    for c in clients:
        try:
            await c.close()
        except Exception:
            pass
    return {
        "latencies": latencies,
        "errors": errors,
        "total": total,
        "setup_errors": setup_errors,
        "samples": samples,
    }


def _child(
    url,
    model,
    n_coroutines,
    seed,
    ready_q,
    start_evt,
    start_at,
    warmup,
    duration,
    result_q,
    width=WIDTH,
    headers=None,
) -> None:
    try:
        try:
            import uvloop

            runner: Callable[..., Any] = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        res = runner(
            _child_main(
                url,
                model,
                n_coroutines,
                seed,
                ready_q,
                start_evt,
                start_at,
                warmup,
                duration,
                width,
                headers,
            )
        )
        result_q.put(("ok", res))
    except BaseException as exc:
        ready_q.put(("failed", repr(exc)))
        result_q.put(("failed", f"{type(exc).__name__}: {exc}"))


def run_load(
    url: str,
    model: str = "mlp",
    concurrency: int = 64,
    duration: float = 10.0,
    warmup: float = 2.0,
    processes: int = 2,
    on_window_start: Callable[[list[int]], None] | None = None,
    on_window_end: Callable[[list[int]], None] | None = None,
    width: int = WIDTH,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Run one closed-loop measurement.

    The hooks run in this process at the window's edges and get the client processes' pids (so a
    caller can sample CPU time, statistics, ... exactly over the measured window).
    """
    shares = _split(concurrency, processes)
    ctx = mp.get_context("spawn")
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    start_evt = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_child,
            args=(
                url,
                model,
                n,
                i + 1,
                ready_q,
                start_evt,
                start_at,
                warmup,
                duration,
                result_q,
                width,
                headers,
            ),
            daemon=True,
        )
        for i, n in enumerate(shares)
    ]
    result = LoadResult(url, model, concurrency, len(procs), duration, warmup)
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = 0
        while ready < len(procs):
            try:
                kind, info = ready_q.get(timeout=0.25)
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"load generator child exited with {dead[0]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("load generator children did not become ready") from None
                continue
            if kind != "ready":
                raise RuntimeError(f"load generator child failed: {info}")
            ready += 1
        start_at.value = time.monotonic() + 0.05
        start_evt.set()
        t_start = start_at.value + warmup
        t_end = t_start + duration
        _sleep_until(t_start)
        if on_window_start:
            on_window_start([p.pid for p in procs if p.pid is not None])
        _sleep_until(t_end)
        if on_window_end:
            on_window_end([p.pid for p in procs if p.pid is not None])

        lat: list[float] = []
        for _ in procs:
            try:
                kind, res = result_q.get(timeout=REQUEST_TIMEOUT_S + 30)
            except queue_mod.Empty:
                raise RuntimeError("load generator children did not report") from None
            if kind != "ok":
                raise RuntimeError(f"load generator child failed: {res}")
            lat.extend(res["latencies"])
            result.errors += res["errors"]
            result.total_requests += res["total"]
            result.setup_errors += res["setup_errors"]
            result.error_samples.extend(res["samples"])
        result.error_samples = result.error_samples[:10]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    result.requests = len(lat)
    result.throughput = len(lat) / duration
    if lat:
        arr = np.asarray(lat) * 1e3
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        result.p50_ms, result.p90_ms, result.p99_ms = float(p50), float(p90), float(p99)
        result.mean_ms, result.max_ms = float(arr.mean()), float(arr.max())
    return result


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port of the gRPC server")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--width", type=int, default=WIDTH, help="FP32 values in INPUT0")
    args = parser.parse_args(argv)
    res = run_load(
        args.url,
        args.model,
        args.concurrency,
        args.duration,
        args.warmup,
        args.processes,
        width=args.width,
    )
    json.dump(res.to_dict(), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
