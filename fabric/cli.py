"""What the three console commands share: flags with environment fallbacks, logging, and the
signal policy (the first SIGINT/SIGTERM asks for an orderly stop, a second one exits now)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


class Flags:
    """An ArgumentParser whose flags default to an environment variable, named in the help."""

    def __init__(self, prog: str, description: str) -> None:
        self.parser = argparse.ArgumentParser(
            prog=prog,
            description=f"{description} Every flag also reads the environment variable shown "
            "in brackets.",
        )

    def add(self, flag: str, env: str, default: Any, help: str, type: type = str) -> None:
        raw = os.environ.get(env)
        value = type(raw) if raw is not None else default
        self.parser.add_argument(flag, type=type, default=value, help=f"{help} [{env}]")

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        return self.parser.parse_args(argv)


def add_fabric_flags(flags: Flags, defaults: Any) -> None:
    """Heartbeats, message size and logging: the same on every tier."""
    flags.add("--heartbeat-interval-s", "FABRIC_HEARTBEAT_INTERVAL_S",
              defaults.heartbeat_interval_s, "heartbeat period", float)  # fmt: skip
    flags.add("--heartbeat-liveness", "FABRIC_HEARTBEAT_LIVENESS", defaults.heartbeat_liveness,
              "missed heartbeats before a peer is dead", int)  # fmt: skip
    flags.add("--log-level", "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")


def add_metrics_flags(flags: Flags, env_prefix: str, defaults: Any) -> None:
    flags.add("--metrics-port", f"{env_prefix}_METRICS_PORT", defaults.metrics_port,
              "Prometheus port, 0 = off", int)  # fmt: skip
    flags.add("--metrics-host", f"{env_prefix}_METRICS_HOST", defaults.metrics_host,
              "Prometheus bind address")  # fmt: skip


def add_curve_client_flags(flags: Flags, defaults: Any) -> None:
    flags.add("--curve-server-key", "FABRIC_CURVE_SERVER_KEY", defaults.curve_server_key,
              "broker's CURVE public .key file; turns CURVE on")  # fmt: skip
    flags.add("--curve-client-cert", "FABRIC_CURVE_CLIENT_CERT", defaults.curve_client_cert,
              "this process's CURVE .key_secret file (for a broker that allow-lists)")  # fmt: skip


GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Call once start-up is done. Everything alive then (modules, descriptors, models) moves
    to the permanent generation, and young collections run less often: full collections no
    longer walk the whole heap, which showed up as tens of ms in p99 latency."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def setup_logging(level: str, component: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s",
    )


class StopSignals:
    """The first signal asks ``request_stop``; the second exits at once. Handlers only
    record and ask: the component's own loop does the ordered shutdown."""

    def __init__(self, component: str, request_stop: Callable[[], None]) -> None:
        self.component = component
        self.request_stop = request_stop
        self.received = 0

    def __call__(self, signum: int, _frame: object = None) -> None:
        self.received += 1
        if self.received > 1:
            logger.warning("[shutdown] %s: second signal, exiting now", self.component)
            os._exit(1)
        logger.info("[shutdown] %s: %s received", self.component, signal.Signals(signum).name)
        self.request_stop()


@contextmanager
def stop_signals(component: str, request_stop: Callable[[], None]) -> Iterator[StopSignals]:
    """Install ``StopSignals`` for SIGINT and SIGTERM; restore the previous handlers after."""
    handler = StopSignals(component, request_stop)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
