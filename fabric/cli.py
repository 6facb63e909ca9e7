"""What the three console commands share: configuration from flags and environment, logging,
and the signal policy (the first SIGINT/SIGTERM asks for an orderly stop, a second one exits now).

Configuration is a tier's frozen dataclass and nothing else. Each field is declared with
``setting(default, help, ...)``; ``build_config`` turns the fields into argparse flags
(``max_queued`` -> ``--max-queued``) that fall back to an environment variable
(``<PREFIX>_MAX_QUEUED`` unless the field names another) and then to the field's default.
Flag names, environment names, help and defaults therefore live in one place per field, and a
field added to ``FabricSettings`` (which every tier's config extends) becomes a flag of every
tier. A value that does not parse, from a flag or from the environment, is an argparse error
naming both (exit status 2, usage, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import logging
import os
import signal
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fabric.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS
from fabric.logs import LOG_FORMATS, configure_logging

logger = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C")

_METADATA_KEY = "fabric.cli"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Setting:
    """How one config field appears on the command line; kept in the field's metadata."""

    help: str
    flag: str | None = None  # None: "--" + the field name with dashes
    env: str | None = None  # None: "<PREFIX>_" + the field name in upper case
    choices: tuple[str, ...] = ()  # matched case-insensitively, stored as spelled here


def setting(
    default: T,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = None,
    choices: tuple[str, ...] = (),
) -> T:
    """A dataclass field with a default and its command-line description."""
    return dataclasses.field(
        default=default, metadata={_METADATA_KEY: Setting(help, flag, env, choices)}
    )


@dataclass(frozen=True)
class FabricSettings:
    """Settings every tier has: fabric heartbeats, logging and the metrics endpoint."""

    heartbeat_interval_s: float = setting(
        HEARTBEAT_INTERVAL_S, "heartbeat period", env="FABRIC_HEARTBEAT_INTERVAL_S"
    )
    heartbeat_liveness: int = setting(
        HEARTBEAT_LIVENESS,
        "missed heartbeats before a peer is dead",
        env="FABRIC_HEARTBEAT_LIVENESS",
    )
    log_level: str = setting("INFO", "log threshold", env="LOG_LEVEL", choices=LOG_LEVELS)
    log_format: str = setting(
        "text",
        "text: human-readable lines; json: one JSON object per line",
        env="LOG_FORMAT",
        choices=LOG_FORMATS,
    )
    metrics: bool = setting(True, "serve Prometheus metrics (--no-metrics: none)")
    metrics_port: int = setting(0, "Prometheus port; 0 = any free port (logged at start)")
    metrics_host: str = setting("127.0.0.1", "Prometheus bind address")
    fabric_keys: str = setting(
        "",
        "CURVE key directory (python -m fabric.curve init DIR writes one); turns CURVE on",
        env="FABRIC_KEYS",
    )
    insecure_fabric: bool = setting(
        False,
        "allow fabric endpoints off loopback without CURVE (no authentication, no encryption)",
        env="FABRIC_INSECURE",
    )


@dataclass(frozen=True)
class CurveClientSettings(FabricSettings):
    """Settings of a tier that connects to brokers (frontend, worker)."""

    curve_server_key: str = setting(
        "", "broker's CURVE public .key file; turns CURVE on", env="FABRIC_CURVE_SERVER_KEY"
    )
    curve_client_cert: str = setting(
        "",
        "this process's CURVE .key_secret file (for a broker that allow-lists)",
        env="FABRIC_CURVE_CLIENT_CERT",
    )
    shm_transport: str = setting(
        "auto",
        "auto: payloads of 256 KiB or more travel through /dev/shm between a frontend and "
        "workers on the same host (fabric.shm_transport); off: always through ZeroMQ",
        env="FABRIC_SHM_TRANSPORT",
        choices=("auto", "off"),
    )


_KIND_NAMES: dict[Any, str] = {
    str: "string",
    int: "int",
    float: "float",
    bool: "bool",
    tuple[str, ...]: "comma-separated list",
}


@dataclass(frozen=True)
class _Option:
    """One config field as the parser sees it."""

    name: str
    kind: Any  # the field's resolved type, one of _KIND_NAMES
    flag: str
    env: str
    setting: Setting
    default: Any
    group: type  # the dataclass that declares the field: one --help section each

    def parse(self, raw: str) -> Any:
        """The field's value from its text form; ValueError says what was expected."""
        if self.setting.choices:
            for choice in self.setting.choices:
                if raw.upper() == choice.upper():
                    return choice
            raise ValueError(f"choose from {', '.join(self.setting.choices)}")
        if self.kind is bool:
            low = raw.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError("use true/false, 1/0, yes/no or on/off")
        try:
            if self.kind is int:
                return int(raw)
            if self.kind is float:
                return float(raw)
        except ValueError:
            raise ValueError(f"not a {_KIND_NAMES[self.kind]}") from None
        if self.kind is str:
            return raw
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def help(self) -> str:
        choices = f" ({', '.join(self.setting.choices)})" if self.setting.choices else ""
        text = f"{self.setting.help}{choices} [{self.env}] (default: {_shown(self.default)})"
        return text.replace("%", "%%")  # argparse %-formats help texts


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else '""'


def _options(cls: type, env_prefix: str) -> list[_Option]:
    """The fields of ``cls``, the tier's own before those it inherits."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_METADATA_KEY)
        if not isinstance(meta, Setting):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        if hints[f.name] not in _KIND_NAMES:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {hints[f.name]!r}")
        options.append(
            _Option(
                name=f.name,
                kind=hints[f.name],
                flag=meta.flag or "--" + f.name.replace("_", "-"),
                env=meta.env or f"{env_prefix}_{f.name.upper()}",
                setting=meta,
                default=f.default,
                group=next(k for k in cls.__mro__ if f.name in inspect.get_annotations(k)),
            )
        )
    # Stable: fields keep their order within a class; deeper classes (the tier's) come first.
    return sorted(options, key=lambda o: -len(o.group.__mro__))


def build_config(
    cls: type[C],
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> C:
    """An instance of the config dataclass ``cls`` from ``argv`` (None: ``sys.argv[1:]``) and
    ``environ`` (None: ``os.environ``): a flag beats its environment variable, which beats
    the field's default. Exits with status 2 and a usage message on a bad value or flag."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description} Every flag also reads the environment variable shown in "
        "brackets; a flag on the command line wins over it.",
    )
    options = _options(cls, env_prefix)
    groups: dict[type, Any] = {}
    for o in options:
        if o.group not in groups:
            title = (o.group.__doc__ or o.group.__name__).strip().splitlines()[0].rstrip(".")
            groups[o.group] = parser.add_argument_group(title)
        if o.kind is bool:  # --flag / --no-flag; the environment takes the same words as parse
            groups[o.group].add_argument(
                o.flag, dest=o.name, action=argparse.BooleanOptionalAction, help=o.help()
            )
        else:  # text here, parsed below: flag and environment values fail the same way
            metavar = _KIND_NAMES[o.kind].split()[-1].upper()
            if o.setting.choices:
                metavar = o.name.split("_")[-1].upper()
            groups[o.group].add_argument(o.flag, dest=o.name, metavar=metavar, help=o.help())
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for o in options:
        given = getattr(args, o.name)
        if isinstance(given, bool):
            values[o.name] = given
            continue
        if given is not None:
            raw, source = given, "the command line"
        elif o.env in environ:
            raw, source = environ[o.env], f"environment variable {o.env}"
        else:
            continue
        try:
            values[o.name] = o.parse(raw)
        except ValueError as exc:
            parser.error(
                f"argument {o.flag} [{o.env}]: invalid {_KIND_NAMES[o.kind]} value {raw!r} "
                f"from {source}: {exc}"
            )
    return cls(**values)


GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Call once start-up is done. Everything alive then (modules, descriptors, models) moves
    to the permanent generation, and young collections run less often: full collections no
    longer walk the whole heap, which showed up as tens of ms in p99 latency."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def setup_logging(level: str, component: str, log_format: str = "text") -> None:
    """Logging of a tier's process: see ``fabric.logs``."""
    configure_logging(level, component, log_format)


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
