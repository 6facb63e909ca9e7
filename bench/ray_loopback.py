"""Start-up hook for the peers venv: keep Ray Serve's gRPC proxy on 127.0.0.1.

Ray Serve adds its gRPC port as ``[::]:PORT`` (all interfaces) and offers no setting for the
address. ``bench.peers`` writes a ``.pth`` file into ``bench/.venv-peers`` that runs this file at
interpreter start-up only when ``BENCH_RAY_LOOPBACK_HOOK`` holds its path (Ray's processes inherit
the variable from ``bench/ray_server.py``). It wraps ``add_grpc_address`` of
``ray.serve._private.default_impl`` when that module is imported, rewriting a wildcard host to
127.0.0.1. Nothing else changes, and nothing happens in any other process.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "ray.serve._private.default_impl"


def _loopback(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0", "", "[::0]") else address


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            original = module.add_grpc_address

            def add_grpc_address(grpc_server, server_address):
                return original(grpc_server, _loopback(server_address))

            module.add_grpc_address = add_grpc_address

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
