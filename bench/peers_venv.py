"""The peers' own virtualenv, ``bench/.venv-peers``, made on first use, and the command line of
a peer server script run in it.

``torch==2.13.0`` (pinned: an unpinned torch downloads GBs of CUDA wheels), ``nvidia-pytriton``,
``matplotlib`` and, when it installs in time, ``ray[serve]``. A ``.pth`` hook lets a peers-venv
process run ``bench/ray_loopback.py`` first when ``BENCH_RAY_LOOPBACK_HOOK`` names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.models import MODELS
from bench.report import BENCH_DIR, PEERS_VENV

MODEL = "mlp"
PEERS_PY = PEERS_VENV / "bin" / "python"
BASE_SPECS = ["torch==2.13.0", "nvidia-pytriton==0.7.0", "matplotlib"]
RAY_SPEC = "ray[serve]==2.60.0"
BASE_MARKER = PEERS_VENV / ".bench-base-installed"
RAY_MARKER = PEERS_VENV / ".bench-ray-installed"
HOOK_PTH = "bench_ray_loopback.pth"
HOOK_ENV = "BENCH_RAY_LOOPBACK_HOOK"


def _pip(specs: list[str], timeout: float) -> tuple[bool, str]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [str(PEERS_PY), "-m", "pip", "install", "-q", *specs],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"`pip install {' '.join(specs)}` did not finish in {timeout:.0f} s"
    took = time.monotonic() - t0
    if r.returncode != 0:
        err = "\n".join(ln for ln in r.stderr.splitlines() if "is ignored" not in ln)[-1500:]
        return False, f"`pip install {' '.join(specs)}` failed after {took:.0f} s:\n{err}"
    return True, f"installed {' '.join(specs)} in {took:.0f} s"


def ensure_venv(ray: bool, install: bool, ray_timeout: float) -> dict[str, Any]:
    """Make ``bench/.venv-peers`` (base packages, then Ray if asked); what happened, per part."""
    status: dict[str, Any] = {"venv": str(PEERS_VENV), "notes": []}
    if not PEERS_PY.exists():
        if not install:
            status["base_error"] = f"{PEERS_VENV} does not exist (run without --no-install)"
            return status
        r = subprocess.run(
            [sys.executable, "-m", "venv", str(PEERS_VENV)], capture_output=True, text=True
        )
        if r.returncode != 0:
            status["base_error"] = f"python -m venv failed: {r.stderr[-800:]}"
            return status
    if not BASE_MARKER.exists():
        if not install:
            status["base_error"] = "peer packages not installed (run without --no-install)"
            return status
        ok, msg = _pip(BASE_SPECS, timeout=1200)
        status["notes"].append(msg)
        if not ok:
            status["base_error"] = msg
            return status
        BASE_MARKER.write_text(" ".join(BASE_SPECS) + "\n")
    if ray:
        if not RAY_MARKER.exists():
            if install:
                ok, msg = _pip([RAY_SPEC], timeout=ray_timeout)
                status["notes"].append(msg)
                if ok:
                    RAY_MARKER.write_text(RAY_SPEC + "\n")
                else:
                    status["ray_error"] = msg + " (skipped: Ray Serve must install quickly)"
            else:
                status["ray_error"] = "Ray Serve not installed (run without --no-install)"
        if RAY_MARKER.exists():
            _install_hook()
    status["versions"] = _versions()
    return status


def _install_hook() -> None:
    """The .pth that runs ``bench/ray_loopback.py`` in every peers-venv process when asked to."""
    site = subprocess.run(
        [str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    line = (
        f"import os, runpy; os.environ.get({HOOK_ENV!r}) and "
        f"runpy.run_path(os.environ[{HOOK_ENV!r}])\n"
    )
    (Path(site) / HOOK_PTH).write_text(line)


def _versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('torch', 'nvidia-pytriton', 'tritonclient', 'ray', 'matplotlib'):\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([str(PEERS_PY), "-c", code], capture_output=True, text=True)
    try:
        versions: dict[str, str] = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {}
    return versions


def peers_libdir() -> str:
    return subprocess.run(
        [str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def peer_argv(script: str, repo: Path, grpc_port: int, http_port: int, *extra: str) -> list[str]:
    """The command line of a peer server script (the options ``bench/peer_args.py`` defines)."""
    return [
        str(PEERS_PY),
        str(BENCH_DIR / script),
        "--model-file",
        str(repo / MODEL / "1" / "model.pt"),
        "--model",
        MODEL,
        "--width",
        str(MODELS[MODEL]),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        *extra,
    ]
