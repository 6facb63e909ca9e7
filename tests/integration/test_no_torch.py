"""The frontend (and broker) never import torch: neither on import nor in a running process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.stack import PYTHON, REPO_ROOT, Stack

IMPORT_ALL_FRONTEND = """
import importlib, pkgutil, sys
import frontend, frontend.__main__
names = [m.name for m in pkgutil.walk_packages(frontend.__path__, "frontend.")]
for name in names:
    importlib.import_module(name)
assert len(names) >= 2, names
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked[:5]
print("imported", len(names), "frontend modules without torch")
"""

IMPORT_ALL_BROKER = IMPORT_ALL_FRONTEND.replace("frontend", "broker")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_frontend_modules_do_not_import_torch() -> None:
    result = run_python(IMPORT_ALL_FRONTEND)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "without torch" in result.stdout


def test_broker_modules_do_not_import_torch() -> None:
    result = run_python(IMPORT_ALL_BROKER)
    assert result.returncode == 0, result.stdout + result.stderr


def mapped_files(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines() if len(line.split()) >= 6}


def test_running_frontend_has_no_torch_mapped(stack: Stack) -> None:
    # The frontend has served requests by now (the shared stack waited for ModelReady).
    stack.client().is_model_ready("simple")
    for proc in [*stack.frontends, stack.broker]:
        files = mapped_files(proc.pid)
        assert any("python" in f or f.endswith(".so") for f in files), "maps not readable?"
        torch_files = sorted(f for f in files if "libtorch" in f or "/torch/" in f)
        assert not torch_files, f"{proc.name} maps torch: {torch_files[:5]}"
    # And the check itself works: the worker does map libtorch.
    worker_files = mapped_files(stack.workers[0].pid)
    assert any("libtorch" in f for f in worker_files), "expected libtorch in the worker's maps"
