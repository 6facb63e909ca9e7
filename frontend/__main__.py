"""``serve-frontend``: run one gRPC frontend process."""

from __future__ import annotations

import asyncio
import signal
import sys

from fabric import tracing
from fabric.cli import StopSignals, build_config, setup_logging, tune_gc
from fabric.curve import FabricSetupError, exit_on_setup_error, fabric_security
from fabric.malloc import tune_malloc
from fabric.prom import MetricsPortError

from .config import ENV_PREFIX, FrontendConfig
from .routing.config import RoutingError
from .server import FrontendServer
from .triton_compat import parse_restrictions


def parse_args(argv: list[str] | None = None) -> FrontendConfig:
    return build_config(
        FrontendConfig,
        argv,
        prog="serve-frontend",
        description="Triton-compatible gRPC frontend (KServe v2 inference.GRPCInferenceService).",
        env_prefix=ENV_PREFIX,
    )


async def _serve(config: FrontendConfig) -> None:
    server = FrontendServer(config)
    loop = asyncio.get_running_loop()
    on_signal = StopSignals("frontend", server.request_stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.start()
        tune_gc()
        await server.run_until_stopped()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        parse_restrictions(config.grpc_restricted_protocol)
    except ValueError as exc:  # a flag error, as every other bad value is
        print(f"serve-frontend: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "frontend", config.log_format)
    tune_malloc()
    try:
        fabric_security(config, "frontend")
        tracing.configure("frontend")
    except FabricSetupError as exc:
        return exit_on_setup_error("serve-frontend", exc)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(config))
    except RoutingError as exc:  # --routing names a file that cannot be used
        print(f"serve-frontend: routing file {exc}", file=sys.stderr)
        return 2
    except MetricsPortError as exc:
        print(f"serve-frontend: error: {exc}", file=sys.stderr)
        return 2
    finally:
        tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
