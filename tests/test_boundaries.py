"""Import boundaries between the tiers, checked two ways.

Dynamically: each module is imported in a fresh interpreter and ``sys.modules`` is inspected
(torch must stay out of the frontend, broker and fabric; grpc out of the broker and fabric).
Statically: every ``import`` statement (including ones inside functions) in the tier packages
is read with ``ast`` (no torch outside ``worker``, no grpc in ``fabric``/``broker``, and no tier
importing another tier).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("frontend", "broker", "worker")
PACKAGES = ("fabric", *TIERS)
GRPC = frozenset({"grpc", "grpc_health", "grpc_reflection", "grpc_status", "grpc_tools"})

FORBIDDEN_PACKAGES: dict[str, frozenset[str]] = {
    "fabric": frozenset({"torch", *GRPC, *TIERS}),
    "broker": frozenset({"torch", *GRPC, "frontend", "worker"}),
    "frontend": frozenset({"torch", "broker", "worker"}),
    "worker": frozenset({"frontend", "broker"}),
}


def modules_of(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


# ---- in a fresh interpreter -----------------------------------------------------------------

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
tops = {m.split(".")[0] for m in sys.modules}
print(json.dumps(sorted(tops)))
"""

NO_TORCH = [
    "frontend.server",
    "frontend.__main__",
    "broker.server",
    "broker.__main__",
    *modules_of("fabric"),
]
NO_GRPC = [*modules_of("broker"), *modules_of("fabric")]


def probe(module: str, extra_path: Path | None = None) -> subprocess.Popen[str]:
    path = [str(ROOT), *([str(extra_path)] if extra_path else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def loaded_packages(proc: subprocess.Popen[str]) -> set[str] | str:
    """The probe's answer, or its stderr when the import itself failed."""
    out, err = proc.communicate(timeout=120)
    return set(json.loads(out)) if proc.returncode == 0 else err


@pytest.fixture(scope="module")
def imported() -> dict[str, set[str] | str]:
    """Top-level packages loaded by importing each module alone (all probes run at once)."""
    procs = {m: probe(m) for m in sorted({*NO_TORCH, *NO_GRPC, "frontend.server"})}
    return {m: loaded_packages(p) for m, p in procs.items()}


def packages_loaded_by(imported: dict[str, set[str] | str], module: str) -> set[str]:
    loaded = imported[module]
    assert isinstance(loaded, set), f"importing {module} failed:\n{loaded}"
    assert module.split(".")[0] in loaded
    return loaded


def test_module_lists_are_complete() -> None:
    assert {"fabric.protocol", "fabric.heartbeat", "fabric.sockets", "fabric"} <= set(NO_TORCH)
    assert {"broker.dispatcher", "broker.server", "broker.__main__"} <= set(NO_GRPC)


@pytest.mark.parametrize("module", NO_TORCH)
def test_does_not_import_torch(imported: dict[str, set[str] | str], module: str) -> None:
    assert "torch" not in packages_loaded_by(imported, module)


@pytest.mark.parametrize("module", NO_GRPC)
def test_does_not_import_grpc(imported: dict[str, set[str] | str], module: str) -> None:
    assert not (packages_loaded_by(imported, module) & GRPC)


def test_probe_sees_what_a_module_imports(
    imported: dict[str, set[str] | str], tmp_path: Path
) -> None:
    # The frontend does use grpc: the probe must notice.
    assert "grpc" in packages_loaded_by(imported, "frontend.server")
    # A module importing torch is noticed too (a stand-in torch keeps this fast).
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    (tmp_path / "leaky.py").write_text("import torch\n")
    leaky = loaded_packages(probe("leaky", tmp_path))
    assert isinstance(leaky, set), leaky
    assert "torch" in leaky


# ---- statically -----------------------------------------------------------------------------


def imported_packages(source: str, module: str, is_package: bool = False) -> set[str]:
    """Top-level package names ``source`` (module ``module``) imports, anywhere in it."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.add(node.module.split(".")[0])
            else:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if target:
                    found.add(target[0])
                else:  # from .. import name, at the root: each name is a package
                    found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_static_checker_finds_every_kind_of_import() -> None:
    source = """
import os, torch.nn as nn
from grpc import aio
from . import sibling
from .queues import ModelQueues
from ..worker import runtime
from .. import frontend
def later():
    import importlib
    importlib.import_module("grpc_health.v1")
    __import__("zmq")
"""
    assert imported_packages(source, "broker.dispatcher") == {
        "os",
        "torch",
        "grpc",
        "broker",
        "worker",
        "frontend",
        "importlib",
        "grpc_health",
        "zmq",
    }
    assert imported_packages("from . import x", "fabric", is_package=True) == {"fabric"}


def package_imports(package: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        out[str(path.relative_to(ROOT))] = imported_packages(
            path.read_text(encoding="utf-8"), module, is_package
        )
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_static_import_boundaries(package: str) -> None:
    imports = package_imports(package)
    assert len(imports) >= 3, f"found too few modules in {package}/"
    # Sanity: the scan sees the package's real dependencies.
    assert any("fabric" in found for found in imports.values()) or package == "fabric"
    violations = {
        path: sorted(found & FORBIDDEN_PACKAGES[package])
        for path, found in imports.items()
        if found & FORBIDDEN_PACKAGES[package]
    }
    assert violations == {}


def test_only_the_worker_imports_torch() -> None:
    worker = package_imports("worker")
    assert any("torch" in found for found in worker.values())
    for package in ("fabric", "broker", "frontend"):
        assert not [p for p, found in package_imports(package).items() if "torch" in found]
