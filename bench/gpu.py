"""``make bench-gpu``: one command for a GPU machine that is lent for minutes.

From a fresh checkout (after ``make install-test``) it

1. looks for an NVIDIA GPU without torch (``/dev/nvidia0``, ``nvidia-smi -L``); on a GPU host
   whose torch cannot use CUDA it installs ``--torch-spec`` (a CUDA build) and checks again;
2. runs the ``gpu`` tests with ``FABRICSERVE_REQUIRE_GPU=1``, so that a skip is a failure;
3. measures in-process (``bench.gpu_inprocess``, its own process): pageable vs pinned copies,
   ``mlp`` and ``wide_mlp`` at batch 1..64 on the device alone, the naive path and the worker's
   executor, and two instances overlapping on their own streams;
4. measures served: broker, a worker on ``cuda:0`` and a frontend, closed-loop 1-row requests
   at concurrency 1..64 (``bench.loadgen``), set against the in-process executor at that batch;
5. writes ``<out>/gpu-<UTC stamp>.json`` and ``<out>/gpu-latest.md``.

Without a GPU it says so loudly and runs the same steps on the CPU with smaller sizes (a dry
run: it proves the command works, and none of its figures is a GPU figure). Exit status: 0 when
every step ran (and, on a GPU host, the gpu tests passed), 1 otherwise; the report is written
either way. Every stage has a time limit so that the whole fits in 8 minutes.

    python -m bench.gpu [--out bench/results] [--quick] [--torch-spec SPEC] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu_report import to_markdown
from bench.lifecycle import StackError, stop_all
from bench.loadgen import run_load
from bench.models import MODELS
from bench.systems import build_repo, start_ours
from worker.devices import host_has_nvidia_gpu

DEFAULT_TORCH_SPEC = (
    "torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128 "
    "--extra-index-url https://pypi.org/simple"
)
BENCH_MODELS = ("mlp", "wide_mlp")
CONCURRENCY = (1, 8, 32, 64)
QUICK_CONCURRENCY = (1, 8)
INSTALL_TIMEOUT_S = 300
TESTS_TIMEOUT_S = 150
INPROCESS_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[1]
NO_GPU_BANNER = (
    "NO GPU ON THIS HOST (no /dev/nvidia0, no nvidia-smi GPU): DRY RUN on the CPU "
    "with smaller sizes. It exercises every step; none of its figures is a GPU figure."
)


def log(text: str) -> None:
    print(f"bench-gpu: {text}", file=sys.stderr, flush=True)


def torch_cuda() -> dict[str, Any]:
    """Ask a fresh interpreter (torch may have just been replaced)."""
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'available': torch.cuda.is_available()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        return {"torch": None, "cuda": None, "available": False, "error": done.stderr[-500:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ensure_cuda_torch(spec: str, report: dict[str, Any]) -> bool:
    """On a GPU host: True once torch can use CUDA, installing ``spec`` if needed."""
    state = torch_cuda()
    report["torch_before"] = state
    if state["available"]:
        return True
    log(f"torch {state['torch']} cannot use CUDA here: pip install {spec}")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *shlex.split(spec)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    report["install"] = {
        "spec": spec,
        "rc": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "tail": (done.stdout + done.stderr)[-1500:],
    }
    state = torch_cuda()
    report["torch_after"] = state
    return bool(state["available"])


def run_gpu_tests(require_gpu: bool) -> dict[str, Any]:
    env = {**os.environ, "FABRICSERVE_REQUIRE_GPU": "1" if require_gpu else "0"}
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-m",
        "gpu",
        "tests/gpu",
        "tests/worker",
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TESTS_TIMEOUT_S,
            check=False,
        )
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"{exc.stdout!r}\ntimed out after {TESTS_TIMEOUT_S}s"
    lines = [line for line in str(out).splitlines() if line.strip()]
    return {
        "rc": rc,
        "required": require_gpu,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.monotonic() - started, 1),
        "tail": "\n".join(lines[-40:]),
    }


def run_inprocess(repo: Path, quick: bool) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.gpu_inprocess",
        "--repo",
        str(repo),
        "--models",
        ",".join(BENCH_MODELS),
        *(["--quick"] if quick else []),
    ]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=INPROCESS_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_served(
    repo: Path, log_dir: Path, device: str, concurrency: tuple[int, ...], duration: float
) -> dict[str, Any]:
    stack = argparse.Namespace(
        broker_args="", frontend_args="", worker_args=f"--device {device} --torch-threads 0"
    )
    try:
        target, info = start_ours(stack, log_dir / "served", repo, list(BENCH_MODELS))
    except StackError as exc:
        return {"error": str(exc)}
    points: dict[str, list[dict[str, Any]]] = {}
    try:
        for model in BENCH_MODELS:
            points[model] = []
            for c in concurrency:
                r = run_load(
                    target.url,
                    model,
                    c,
                    duration,
                    warmup=min(1.0, duration / 2),
                    processes=min(4, max(1, c // 8)),
                    width=MODELS[model],
                )
                points[model].append(
                    {
                        "concurrency": c,
                        "rows_s": r.throughput,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "errors": r.errors,
                        "error_samples": r.error_samples[:3],
                    }
                )
                log(f"served {model} c={c}: {r.throughput:,.0f} rows/s, p50 {r.p50_ms} ms")
    finally:
        stop_all(target.procs)
    return {
        "device": device,
        "ready_s": info.ready_s,
        "sanity_error": info.sanity_error,
        "points": points,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="make bench-gpu: gpu tests and a CUDA benchmark")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--quick", action="store_true", help="fewer sizes and shorter points")
    p.add_argument("--torch-spec", default=DEFAULT_TORCH_SPEC)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--duration", type=float, default=None, help="seconds per served point")
    a = p.parse_args(argv)
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    gpu_host = host_has_nvidia_gpu()
    report: dict[str, Any] = {"timestamp": stamp, "gpu_host": gpu_host, "stages": {}}
    ok = True
    if gpu_host:
        cuda_ok = ensure_cuda_torch(a.torch_spec, report)
        if not cuda_ok:
            log(
                "ERROR: this host has an NVIDIA GPU but torch still cannot use CUDA; "
                "see the report's install section"
            )
            ok = False
    else:
        log(NO_GPU_BANNER)
        cuda_ok = False
        report["torch_before"] = torch_cuda()
    report["dry_run"] = not cuda_ok
    quick = a.quick or not cuda_ok
    device = "cuda:0" if cuda_ok else "cpu"

    def stage(name: str, t0: float) -> None:
        report["stages"][name] = round(time.monotonic() - t0, 1)
        log(f"{name} done in {report['stages'][name]} s ({time.monotonic() - started:.0f} s in)")

    if not a.skip_tests:
        t0 = time.monotonic()
        report["tests"] = run_gpu_tests(require_gpu=gpu_host)
        log(f"gpu tests: {report['tests']['summary']}")
        ok = ok and report["tests"]["rc"] in (0, 5)  # 5: nothing collected (dry run: all skip)
        stage("tests", t0)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        repo, log_dir = Path(tmp) / "models", a.out / "logs" / f"gpu-{stamp}"
        log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        problem = build_repo(repo, log_dir, list(BENCH_MODELS), frozenset())
        stage("models", t0)
        if problem is not None:
            report["error"] = problem
            ok = False
        else:
            t0 = time.monotonic()
            report["inprocess"] = run_inprocess(repo, quick)
            ok = ok and "error" not in report["inprocess"]
            stage("inprocess", t0)
            t0 = time.monotonic()
            duration = a.duration or (1.5 if quick else 4.0)
            report["served"] = run_served(
                repo, log_dir, device, QUICK_CONCURRENCY if quick else CONCURRENCY, duration
            )
            ok = ok and "error" not in report["served"]
            stage("served", t0)
    report["ok"] = ok
    report["seconds"] = round(time.monotonic() - started, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    json_path = a.out / f"gpu-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (a.out / "gpu-latest.md").write_text(md)
    print(md)
    log(
        f"wrote {json_path} and {a.out / 'gpu-latest.md'} in {report['seconds']} s"
        + ("" if ok else " (SOME STEPS FAILED)")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
