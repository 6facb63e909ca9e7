"""``tritonclient.utils.shared_memory``, importable on a current setuptools.

tritonclient 2.41's shared memory helpers find their C library through ``pkg_resources``, which
setuptools no longer ships (81 and later). Where it is missing, a one-function stand-in resolves
the file inside the installed package, as ``pkg_resources.resource_filename`` did. Used by the
shared memory benchmark and end-to-end tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def _resource_filename(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} not found")
    return str(Path(next(iter(spec.submodule_search_locations))) / name)


def shared_memory() -> Any:
    """The ``tritonclient.utils.shared_memory`` module."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    return importlib.import_module("tritonclient.utils.shared_memory")
