"""Typed benchmark results: what one point measured, a round, a summary row, the whole report.

msgspec Structs, so ``to_json`` writes the same keys the string-keyed dicts had (fields left at
their default are omitted, as the dicts left those keys out). Records of one measurement are
frozen; the per-stack ``StackInfo`` and the ``Report`` fill in as a run goes.
"""

from __future__ import annotations

from typing import Any

import msgspec


class SizeCompute(msgspec.Struct, frozen=True):
    """Executed batches of one size in a window and their summed compute time."""

    n: int
    ns: int


class BatchSnapshot(msgspec.Struct, frozen=True):
    """Cumulative server statistics of one model (``get_inference_statistics``).

    ``by_size`` maps rows per executed batch to (batches, compute_infer ns); ``infer_ns`` is
    ``inference_stats.compute_infer.ns`` (Triton charges every request its batch's full time).
    """

    by_size: dict[int, tuple[int, int]]
    inference_count: int
    execution_count: int
    infer_ns: int


class ComputeDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """What executed between two snapshots: batches per size, compute time, rows."""

    sizes: dict[int, SizeCompute]
    rows: int
    batches: int
    ns: int
    mean_batch: float | None = None
    us_per_row: float | None = None
    triton_infer_us_per_inference: float | None = None


class ComputeVsInprocess(msgspec.Struct, frozen=True):
    """The server's compute time against the in-process model on the same batches."""

    server_us_per_row: float
    inprocess_us_per_row: float
    ratio: float
    interpolated_share: float


class Measurement(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One system at one (model, concurrency) point: load result plus per-process costs."""

    system: str
    model: str
    concurrency: int
    loadavg: float = 0.0
    # bench.loadgen.LoadResult
    url: str = ""
    processes: int = 0
    duration_s: float = 0.0
    warmup_s: float = 0.0
    requests: int = 0
    errors: int = 0
    throughput: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    total_requests: int = 0
    setup_errors: int = 0
    error_samples: list[str] = msgspec.field(default_factory=list)
    # Costs over the measured window, per process name (and the load generator's).
    window_s: float | None = None
    cpu_s: dict[str, float] = msgspec.field(default_factory=dict)
    cpu_s_per_1k: dict[str, float | None] = msgspec.field(default_factory=dict)
    client_cpu_s_per_1k: float | None = None
    cpu_util: dict[str, float] = msgspec.field(default_factory=dict)
    wakeups_per_req: dict[str, float | None] = msgspec.field(default_factory=dict)
    rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    client_cpu_util: float | None = None
    foreign_cpu_util: float | None = None
    # Server statistics, where the system answers them.
    compute: ComputeDelta | None = None
    mean_batch: float | None = None
    batch_sizes: dict[int, int] = msgspec.field(default_factory=dict)
    compute_vs_inprocess: ComputeVsInprocess | None = None
    dead: dict[str, int | None] = msgspec.field(default_factory=dict)
    error: str | None = None


class StartFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A system that could not be started (or was skipped) in a round."""

    system: str
    model: str = ""
    error: str


class IdleSample(msgspec.Struct, frozen=True, kw_only=True):
    """A system's CPU use (fraction of one core) and memory while up and sent nothing."""

    system: str
    model: str
    idle_cpu_util: dict[str, float]
    idle_rss_mb: dict[str, float]


RoundRecord = Measurement | StartFailure | IdleSample


class StackInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Start-up facts of one system in one round, filled in as it starts and stops."""

    logs: str | None = None
    workspace: str | None = None
    ready_s: float | None = None
    sanity_error: str | None = None
    statistics: bool | None = None
    idle_cpu_util: dict[str, float] = msgspec.field(default_factory=dict)
    idle_rss_mb: dict[str, float] = msgspec.field(default_factory=dict)
    exit_codes: dict[str, int | None] = msgspec.field(default_factory=dict)


class Round(msgspec.Struct, kw_only=True):
    """Everything one round measured."""

    round: int
    results: list[RoundRecord] = msgspec.field(default_factory=list)
    info: dict[str, StackInfo] = msgspec.field(default_factory=dict)


class SummaryRow(msgspec.Struct, frozen=True, kw_only=True):
    """One (model, system, concurrency): medians over rounds, ratios taken within a round."""

    system: str
    model: str
    concurrency: int
    rounds: int
    failed: list[str]
    throughput: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    error_samples: list[str] = msgspec.field(default_factory=list)
    throughput_vs_bare: float | None = None
    p50_vs_bare: float | None = None
    p50_minus_bare_ms: float | None = None
    p99_vs_bare: float | None = None
    cpu_s_per_1k: dict[str, float | None] = msgspec.field(default_factory=dict)
    client_cpu_s_per_1k: float | None = None
    wakeups_per_req: dict[str, float | None] = msgspec.field(default_factory=dict)
    rss_mb: dict[str, float | None] = msgspec.field(default_factory=dict)
    foreign_cpu_util: float | None = None
    mean_batch: float | None = None
    compute_us_per_row: float | None = None
    inprocess_us_per_row: float | None = None
    compute_vs_inprocess: float | None = None
    triton_infer_us_per_inference: float | None = None


class Goal(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One goal of the issue checked against this run's numbers.

    ``verdict`` is PASS or FAIL where the numbers exist, NOT RUN where a system it needs did not
    run (``detail`` says why)."""

    name: str
    text: str
    verdict: str
    value: float | None = None
    target: float | None = None
    at_most: bool = False
    """The goal is ``value <= target`` (else ``value >= target``)."""
    detail: str = ""


class CpuPerCall(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """CPU ms per call of one system at one concurrency: the sum over its processes, median over
    rounds of each round's sum, and the per-process medians it came from."""

    system: str
    model: str
    concurrency: int
    rounds: int
    total_ms: float
    per_process_ms: dict[str, float]
    vs_peer: float | None = None
    """Ours only: median over rounds of each round's ours ÷ PyTriton total (paired)."""


Note = tuple[str, str, str]
"""(subject, where, text) of a line under "Failures and notes"."""


class Report(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A whole run of ``bench.run`` or ``bench.peers``; ``inprocess`` is ``bench.inprocess``'s
    JSON per model, as that subprocess printed it."""

    meta: dict[str, Any]
    rounds: list[Round] = msgspec.field(default_factory=list)
    inprocess: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    summary: list[SummaryRow] = msgspec.field(default_factory=list)
    repo_error: str | None = None
    install: dict[str, Any] = msgspec.field(default_factory=dict)
    """``bench.peers`` only: how its virtualenv was prepared."""
    notes: list[Note] = msgspec.field(default_factory=list)
    cpu_per_call: list[CpuPerCall] = msgspec.field(default_factory=list)
    """``bench.run``: ours against PyTriton, CPU ms per call (``bench.peer_cpu``)."""
    large: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """``bench.run``: the large-payload points, as ``bench.large.measure`` records them."""
    goals: list[Goal] = msgspec.field(default_factory=list)
    """``bench.run``: the issue's goals with their verdicts."""


def to_json(report: Report) -> bytes:
    """The report as indented JSON (the format ``bench.plot`` and readers of old runs expect)."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def find(results: list[RoundRecord], system: str, model: str, c: int) -> Measurement | None:
    """The measurement of ``system`` on ``model`` at concurrency ``c`` in one round, if any."""
    for r in results:
        if isinstance(r, Measurement) and (r.system, r.model, r.concurrency) == (system, model, c):
            return r
    return None
