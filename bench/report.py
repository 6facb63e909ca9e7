"""Shared reporting: the PNG plot (via matplotlib in some interpreter) and ``latest.md``.

``latest.md`` is assembled from the latest section of each benchmark, each written by its tool:

- ``run-latest.md``: ``python -m bench.run`` (``make bench``), our stack vs the bare gRPC server;
- ``peers-latest.md``: ``python -m bench.peers``, the same model on PyTriton / Ray Serve;
- ``broker-latest.md``: ``python -m bench.broker_bench``, one broker process in isolation;

under a header naming the machine, so the file reads on its own. Every tool calls
:func:`write_latest` after writing its section; sections not run yet are left out.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_VENV = BENCH_DIR / ".venv-peers"
PLOT_VENV = BENCH_DIR / ".venv-plot"
SECTIONS = ("run", "peers", "broker")


def _has_matplotlib(python: str) -> bool:
    try:
        r = subprocess.run(
            [python, "-c", "import matplotlib"], capture_output=True, timeout=60, cwd=REPO_ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def plot_python() -> tuple[str | None, str]:
    """An interpreter with matplotlib: ours, the peers venv, or a small venv made for it."""
    candidates = [sys.executable, str(PEERS_VENV / "bin" / "python"), str(PLOT_VENV / "bin/python")]
    for py in candidates:
        if Path(py).exists() and _has_matplotlib(py):
            return py, ""
    try:
        if not (PLOT_VENV / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(PLOT_VENV)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        r = subprocess.run(
            [str(PLOT_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "matplotlib"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            return None, f"pip install matplotlib failed: {r.stderr[-500:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot make {PLOT_VENV}: {exc}"
    return str(PLOT_VENV / "bin" / "python"), ""


def plot(json_path: Path, png_path: Path) -> str | None:
    """Draw ``png_path`` from a result JSON; None on success, else why not."""
    py, err = plot_python()
    if py is None:
        return err
    r = subprocess.run(
        [py, "-m", "bench.plot", str(json_path), str(png_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    if r.returncode != 0:
        return f"bench.plot failed: {r.stderr[-800:]}"
    return None


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem} memory, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def write_latest(out: Path) -> Path:
    parts = []
    for name in SECTIONS:
        path = out / f"{name}-latest.md"
        if path.exists():
            parts.append(path.read_text().rstrip() + "\n")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Benchmark results",
        "",
        f"Assembled {now} from the latest run of each benchmark below; each section names its "
        "own run time and git commit (a commit with uncommitted files listed was measured on "
        "that working tree).",
        "",
        f"- **Machine**: {machine()}. The machine is small and shared with other work: absolute "
        "numbers are noisy, so every figure is set against baselines measured in the same run "
        "(the bare grpc.aio server, the model called in-process), and 'other CPU' says how busy "
        "the machine was with processes the benchmark did not start.",
        "- **Commands**: `make bench` (`python -m bench.run`, `--quick` for a short run), "
        "`make bench-peers` (`python -m bench.peers`), `python -m bench.broker_bench`. Raw "
        "numbers: the JSON files beside this one; process logs: `bench/results/logs/` (not "
        "committed).",
        "- **Load**: closed loop, `tritonclient.grpc.aio`, one FP32 `[1, width]` request per call, "
        "spread over 2 client processes on the same machine (the clients' CPU is reported).",
        "",
    ]
    path = out / "latest.md"
    path.write_text("\n".join(head) + "\n" + "\n".join(parts))
    return path
