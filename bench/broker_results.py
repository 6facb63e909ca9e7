"""Typed results of ``bench.broker_bench``: routing throughput, broker memory with a queue,
frontend memory under load, and the report holding them.

Mutable msgspec Structs, filled in as each measurement gets further (a failure keeps what was
measured before it and says why in ``error``); ``to_json`` omits what was never measured.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bench.results import Measurement


class Routing(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Requests routed through one broker by fake peers, one message per request or coalesced."""

    mode: str
    coalesce: bool
    broker_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    frontends: dict[str, Any] = msgspec.field(default_factory=dict)
    workers: dict[str, Any] = msgspec.field(default_factory=dict)
    duration_s: float | None = None
    routed_per_s: float | None = None
    errors: int = 0
    error_sample: str | None = None
    broker_cpu_util: float | None = None
    broker_cpu_s_per_1k: float | None = None
    per_broker_core_s: float | None = None
    broker_wakeups_per_req: float | None = None
    fake_frontends_cpu_util: float | None = None
    fake_workers_cpu_util: float | None = None
    foreign_cpu_util: float | None = None
    error: str | None = None


class QueuedMemory(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Broker memory idle and with ``queue_depth`` requests waiting for credit."""

    queued_target: int
    capacity: int
    idle_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    payload_bytes: int | None = None
    queue_depth: float | None = None
    queued_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    rejected: int = 0
    bytes_per_queued: float | None = None
    error: str | None = None


class FrontendMemory(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The real frontend's memory idle and under closed-loop load, and that load's figures."""

    concurrency: int
    idle_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    frontend_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    load: Measurement | None = None
    error: str | None = None


class BrokerReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One run of ``bench.broker_bench``."""

    meta: dict[str, Any]
    routing: list[Routing] = msgspec.field(default_factory=list)
    queued: QueuedMemory | None = None
    frontend: FrontendMemory | None = None

    def failed(self) -> bool:
        parts = [*self.routing, self.queued, self.frontend]
        return any(p is not None and p.error is not None for p in parts)


def to_json(report: BrokerReport) -> bytes:
    """The report as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
