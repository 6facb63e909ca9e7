"""Our protos as other clients use them: Python stubs compiled with ``-I protos`` only (in a
process of their own) and Node's @grpc/grpc-js loading the .proto files with ``-I protos``
semantics. Texts and codes asserted are Triton's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.stack import PYTHON, REPO_ROOT, Stack

HERE = Path(__file__).resolve().parent
NODE_DEPS = ("@grpc/grpc-js@1.14.3", "@grpc/proto-loader@0.8.0")
NODE_CACHE = REPO_ROOT / "build" / "conformance-node"  # ignored by git, kept between runs


def test_python_stubs_compiled_with_dash_i_protos(triton_stack: Stack, tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, str(HERE / "stub_client.py"), triton_stack.frontend.url, str(tmp_path / "gen")],
        cwd=tmp_path,  # not the repository root: nothing may come from our protos package
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STUB CLIENT OK" in result.stdout


def node_modules() -> Path:
    """grpc-js and proto-loader installed into the build tree (once); skip without npm or
    without a registry to install from."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    modules = NODE_CACHE / "node_modules"
    if (
        not (modules / "@grpc" / "grpc-js").is_dir()
        or not (modules / "@grpc" / "proto-loader").is_dir()
    ):
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        (NODE_CACHE / "package.json").write_text('{"private": true}\n')
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", *NODE_DEPS],
            cwd=NODE_CACHE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.skip(f"npm could not install {NODE_DEPS}: {result.stderr.strip()[-300:]}")
    return modules


def test_node_grpc_js_client(triton_stack: Stack) -> None:
    modules = node_modules()
    script = NODE_CACHE / "node_client.js"  # next to its node_modules, so require() finds them
    shutil.copy(HERE / "node_client.js", script)
    result = subprocess.run(
        ["node", str(script), triton_stack.frontend.url, str(REPO_ROOT / "protos")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(shutil.which("node") or "node").parent), "NODE_PATH": str(modules)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["metadata"]["name"] == "triton"
    assert out["unknown"] == {
        "code": 5,  # NOT_FOUND
        "details": "Request for unknown model: 'no_such_model' is not found",
    }
    assert out["bad_version"]["code"] == 3  # INVALID_ARGUMENT
    assert out["bad_version"]["details"].startswith(
        "failed to get model version from specified version string 'abc'"
    )
    assert out["infer"] == {"id": "node", "output0": [i + 1 for i in range(16)]}
    assert out["config"] == 8
