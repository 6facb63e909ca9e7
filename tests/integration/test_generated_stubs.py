"""Our own generated stubs (``protos``) talk to the frontend: run in a separate process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.stack import PYTHON, REPO_ROOT, Stack

SCRIPT = Path(__file__).with_name("stub_client.py")


def test_generated_stubs_client(stack: Stack) -> None:
    result = subprocess.run(
        [PYTHON, str(SCRIPT), stack.frontend.url],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"stub client failed ({result.returncode}):\n{output}"
    assert "STUB CLIENT OK" in result.stdout, output
