"""Log records of every tier: how they look, what request they belong to, and which levels
are on (changeable at run time, as Triton's LogSettings RPC does).

Two formats. ``text`` (default) is one human-readable line: time, level, tier, logger,
message, then ``[request_id=... model=...]`` when known. ``json`` is one JSON object per line
with ``time`` (ISO 8601, UTC), ``level``, ``tier``, ``process``, ``logger``, ``message`` and,
where known, ``request_id``, ``model``, ``version``, ``trace_id`` (and ``exception``), for
Loki or ELK without parsing rules.

The request fields come from ``extra={...}`` on the call or, failing that, from the context
set by ``log_context`` (a ``contextvars`` value: it follows an asyncio task, not a thread).
Per-call lines belong at DEBUG and never carry payloads.

Levels follow Triton's switches: ``info``, ``warning``, ``error`` (each on or off) and a
``verbose`` level (> 0 lets DEBUG through). ``--log-level X`` is the starting point: every
level from X up is on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TextIO

LOG_FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "model", "version", "trace_id")


@dataclass(frozen=True, slots=True)
class LogContext:
    request_id: str = ""
    model: str = ""
    version: str = ""
    trace_id: str = ""


_EMPTY = LogContext()
_CONTEXT: ContextVar[LogContext] = ContextVar("fabric_log_context", default=_EMPTY)


def set_log_context(
    *,
    request_id: str | None = None,
    model: str | None = None,
    version: str | None = None,
    trace_id: str | None = None,
) -> Token[LogContext]:
    """Add fields to the current context (None keeps a field); undo with ``reset_log_context``."""
    given = {
        k: v
        for k, v in (
            ("request_id", request_id),
            ("model", model),
            ("version", version),
            ("trace_id", trace_id),
        )
        if v is not None
    }
    return _CONTEXT.set(replace(_CONTEXT.get(), **given))


def reset_log_context(token: Token[LogContext]) -> None:
    _CONTEXT.reset(token)


@contextmanager
def log_context(
    *,
    request_id: str | None = None,
    model: str | None = None,
    version: str | None = None,
    trace_id: str | None = None,
) -> Iterator[LogContext]:
    """Within the block, log records carry these fields (None keeps the outer value)."""
    token = set_log_context(request_id=request_id, model=model, version=version, trace_id=trace_id)
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


def current_log_context() -> LogContext:
    return _CONTEXT.get()


class ContextFilter(logging.Filter):
    """Puts the request fields on every record: ``extra=`` wins, then the context, then ""."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        for name in CONTEXT_FIELDS:
            if not getattr(record, name, ""):
                setattr(record, name, getattr(ctx, name))
        return True


@dataclass
class LevelSwitches:
    """Triton's log switches. Read by every thread that logs, written by one control call:
    each field is one attribute store."""

    info: bool = True
    warning: bool = True
    error: bool = True
    verbose: int = 0

    @classmethod
    def from_level(cls, level: str) -> LevelSwitches:
        n = logging.getLevelName(level.upper())
        n = n if isinstance(n, int) else logging.INFO
        return cls(
            info=n <= logging.INFO,
            warning=n <= logging.WARNING,
            error=n <= logging.ERROR,
            verbose=1 if n <= logging.DEBUG else 0,
        )

    def allows(self, levelno: int) -> bool:
        if levelno >= logging.CRITICAL:
            return True
        if levelno >= logging.ERROR:
            return self.error
        if levelno >= logging.WARNING:
            return self.warning
        if levelno >= logging.INFO:
            return self.info
        return self.verbose > 0

    def lowest(self) -> int:
        """The root logger's level: records below it are never even made (cheap DEBUG calls)."""
        for level, on in (
            (logging.DEBUG, self.verbose > 0),
            (logging.INFO, self.info),
            (logging.WARNING, self.warning),
            (logging.ERROR, self.error),
        ):
            if on:
                return level
        return logging.CRITICAL


class SwitchFilter(logging.Filter):
    def __init__(self, switches: LevelSwitches) -> None:
        super().__init__()
        self.switches = switches

    def filter(self, record: logging.LogRecord) -> bool:
        return self.switches.allows(record.levelno)


def _iso8601(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class TextFormatter(logging.Formatter):
    """``2026-12-01 15:29:01,123 INFO broker broker.server: message [model=simple]``; with
    ``iso8601`` the time is ``2026-12-01T15:29:01.123Z`` (Triton's ``ISO8601`` log format)."""

    def __init__(self, tier: str, iso8601: bool = False) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {tier} %(name)s: %(message)s")
        self.iso8601 = iso8601

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso8601(record.created) if self.iso8601 else super().formatTime(record, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [f"{k}={v}" for k in CONTEXT_FIELDS if (v := getattr(record, k, ""))]
        if not known:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the first line
        return f"{head} [{' '.join(known)}]{sep}{tail}"


class JsonFormatter(logging.Formatter):
    def __init__(self, tier: str) -> None:
        super().__init__()
        self.tier = tier
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": _iso8601(record.created),
            "level": record.levelname,
            "tier": self.tier,
            "process": self.pid,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, "")
            if v:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class LogControl:
    """The process's one log handler and its switches; LogSettings reads and changes them."""

    def __init__(
        self, tier: str, handler: logging.Handler, switches: LevelSwitches, log_format: str
    ) -> None:
        self.tier = tier
        self.handler = handler
        self.switches = switches
        self.log_format = ""
        self.set_format(log_format)

    def set_format(self, log_format: str) -> None:
        """``text``, ``json``, or Triton's ``default`` (= text) and ``ISO8601`` (text with
        ISO 8601 UTC times). ValueError for anything else."""
        if log_format in ("text", "default"):
            formatter: logging.Formatter = TextFormatter(self.tier)
        elif log_format == "ISO8601":
            formatter = TextFormatter(self.tier, iso8601=True)
        elif log_format == "json":
            formatter = JsonFormatter(self.tier)
        else:
            raise ValueError(log_format)
        self.handler.setFormatter(formatter)
        self.log_format = "text" if log_format == "default" else log_format

    def apply_levels(self) -> None:
        logging.getLogger().setLevel(self.switches.lowest())


_installed: LogControl | None = None


def configure_logging(
    level: str, tier: str, log_format: str = "text", stream: TextIO | None = None
) -> LogControl:
    """Replace the root logger's handlers with one stderr (or ``stream``) handler in
    ``log_format``, levels from ``level`` up on. Returns the control LogSettings uses."""
    global _installed
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    switches = LevelSwitches.from_level(level)
    handler.addFilter(SwitchFilter(switches))
    control = LogControl(tier, handler, switches, log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    control.apply_levels()
    _installed = control
    return control


def installed_control() -> LogControl | None:
    """The control ``configure_logging`` made in this process, if it was called."""
    return _installed
