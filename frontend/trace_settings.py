"""Which calls the frontend traces, and the TraceSetting RPC that reads and changes it at run
time, with Triton's semantics as far as they map onto OpenTelemetry export.

Settings (Triton's names; every value is a list of strings on the wire):

| setting         | meaning here                                                               |
|-----------------|----------------------------------------------------------------------------|
| `trace_level`   | `["OFF"]` traces nothing; `["TIMESTAMPS"]` traces (spans carry timings)    |
|                 | `TENSORS` is refused, as in Triton's OpenTelemetry mode: no payload is ever |
|                 | put in a span                                                              |
| `trace_rate`    | trace 1 call in N (every N-th call of the model, or of all models sharing  |
|                 | the global rate); a caller's sampled `traceparent` decides instead while   |
|                 | the sampler is parent-based (`OTEL_TRACES_SAMPLER` parentbased_*)          |
| `trace_count`   | traces still to take; -1 = no limit; counts down, 0 stops tracing          |
| `log_frequency` | accepted and reported; export timing is the batch processor's (OTEL_BSP_*) |
| `trace_file`    | refused (INVALID_ARGUMENT): traces go to the OTLP endpoint, never a file   |

Global settings start from the OpenTelemetry sampler variables (``fabric.tracing.PLAN``):
always_on → rate 1; always_off → OFF; traceidratio p → rate round(1/p) (OFF for p = 0). A
model's settings override some of the global ones; the others follow the global settings as
they change (Triton). A setting sent with no value is cleared: a global one back to its start
value, a model's back to the global one. A request without settings reads them.

``TraceSettings`` is the pure decision (``decide`` runs once per call when tracing is on:
one dict lookup and a counter); ``answer`` turns a TraceSettingRequest into its response.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from fabric import errors, names
from fabric.errors import RequestError
from fabric.tracing import ExportPlan
from protos import grpc_service_pb2 as pb

OFF = "OFF"
TIMESTAMPS = "TIMESTAMPS"
TENSORS = "TENSORS"
LEVEL = "trace_level"
RATE = "trace_rate"
COUNT = "trace_count"
LOG_FREQUENCY = "log_frequency"
TRACE_FILE = "trace_file"
SETTINGS = (LEVEL, RATE, COUNT, LOG_FREQUENCY)
UNLIMITED = -1


@dataclass(slots=True)
class _Counter:
    """Calls seen by one rate; shared by every scope that uses that rate."""

    calls: int = 0


@dataclass(slots=True)
class _Budget:
    """Traces still to take (``UNLIMITED`` = no limit); shared like ``_Counter``."""

    remaining: int = UNLIMITED


@dataclass(frozen=True)
class Values:
    """One complete set of settings."""

    level: str = TIMESTAMPS  # OFF or TIMESTAMPS
    rate: int = 1
    count: int = UNLIMITED
    log_frequency: int = 0


@dataclass(slots=True)
class _Effective:
    """What ``decide`` reads for one scope, resolved once per update."""

    off: bool
    rate: int
    counter: _Counter
    budget: _Budget


@dataclass
class _Overrides:
    """A model's own settings (None: follow the global one) and its own counters."""

    level: str | None = None
    rate: int | None = None
    count: int | None = None
    log_frequency: int | None = None
    counter: _Counter = field(default_factory=_Counter)
    budget: _Budget = field(default_factory=_Budget)


def initial_values(plan: ExportPlan) -> Values:
    """The global settings a process starts with, from its OTEL_TRACES_SAMPLER[_ARG]."""
    if not plan.enabled:
        return Values(level=OFF)
    sampler = plan.sampler.removeprefix("parentbased_")
    if sampler == "always_off":
        return Values(level=OFF)
    if sampler == "traceidratio":
        ratio = float(plan.sampler_arg) if plan.sampler_arg else 1.0
        if ratio <= 0.0:
            return Values(level=OFF)
        return Values(rate=max(1, round(1.0 / ratio)))
    return Values()


class TraceSettings:
    """Global and per-model trace settings, and the per-call sampling decision."""

    def __init__(self, start: Values, parent_based: bool = True, enabled: bool = True) -> None:
        self.start = start
        self.parent_based = parent_based
        self.enabled = enabled  # False: no exporter, nothing to change
        self._global = start
        self._counter = _Counter()
        self._budget = _Budget(start.count)
        self._models: dict[str, _Overrides] = {}
        self._effective: dict[str, _Effective] = {}
        self._global_effective = self._resolve(None)

    @classmethod
    def from_plan(cls, plan: ExportPlan) -> TraceSettings:
        return cls(
            initial_values(plan), plan.sampler.startswith("parentbased_"), enabled=plan.enabled
        )

    # ---- per call --------------------------------------------------------------------
    def decide(self, model: str, parent_sampled: bool | None) -> bool:
        """Whether to trace this call; ``parent_sampled`` is the caller's traceparent sampled
        flag (None: no valid traceparent). Counts the call against its rate and count."""
        eff = (
            self._effective.get(model, self._global_effective)
            if self._effective
            else (self._global_effective)
        )
        if eff.off:
            return False
        if parent_sampled is not None and self.parent_based:
            if not parent_sampled:
                return False
        elif eff.rate > 1:
            eff.counter.calls += 1
            if eff.counter.calls % eff.rate:
                return False
        budget = eff.budget
        if budget.remaining == 0:
            return False
        if budget.remaining > 0:
            budget.remaining -= 1
        return True

    # ---- reading and changing -------------------------------------------------------------
    def values(self, model: str = "") -> dict[str, list[str]]:
        """The settings in effect for ``model`` ("" = the global ones), as TraceSetting
        reports them."""
        g = self._global
        o = self._models.get(model) if model else None
        level = o.level if o is not None and o.level is not None else g.level
        rate = o.rate if o is not None and o.rate is not None else g.rate
        budget = o.budget if o is not None and o.count is not None else self._budget
        freq = o.log_frequency if o is not None and o.log_frequency is not None else g.log_frequency
        return {
            LEVEL: [level],
            RATE: [str(rate)],
            COUNT: [str(budget.remaining)],
            LOG_FREQUENCY: [str(freq)],
        }

    def update(self, model: str, changes: dict[str, list[str]]) -> None:
        """Apply ``changes`` (setting -> values; no values = clear) to ``model``'s settings
        ("" = the global ones), all or none. Raises RequestError(INVALID_ARGUMENT)."""
        parsed = {key: _parse(key, values) for key, values in changes.items()}
        if not model:
            g = self._global
            s = self.start
            level = parsed.get(LEVEL, g.level)
            rate = parsed.get(RATE, g.rate)
            freq = parsed.get(LOG_FREQUENCY, g.log_frequency)
            self._global = Values(
                level=s.level if level is None else str(level),
                rate=s.rate if rate is None else int(rate),
                count=g.count,
                log_frequency=s.log_frequency if freq is None else int(freq),
            )
            if COUNT in parsed:
                count = parsed[COUNT]
                self._budget.remaining = s.count if count is None else int(count)
        else:
            o = self._models.setdefault(model, _Overrides())
            for key, value in parsed.items():
                if key == LEVEL:
                    o.level = None if value is None else str(value)
                elif key == RATE:
                    o.rate = None if value is None else int(value)
                elif key == COUNT:
                    o.count = None if value is None else int(value)
                    if o.count is not None:
                        o.budget = _Budget(o.count)
                elif key == LOG_FREQUENCY:
                    o.log_frequency = None if value is None else int(value)
            if (o.level, o.rate, o.count, o.log_frequency) == (None, None, None, None):
                del self._models[model]
        self._global_effective = self._resolve(None)
        self._effective = {m: self._resolve(o) for m, o in self._models.items()}

    def _resolve(self, o: _Overrides | None) -> _Effective:
        g = self._global
        if o is None:
            return _Effective(g.level == OFF, g.rate, self._counter, self._budget)
        level = o.level if o.level is not None else g.level
        return _Effective(
            level == OFF,
            o.rate if o.rate is not None else g.rate,
            o.counter if o.rate is not None else self._counter,
            o.budget if o.count is not None else self._budget,
        )


def _parse(key: str, values: list[str]) -> str | int | None:
    """One setting's new value (None: clear it); raises RequestError for what cannot be."""
    if key == TRACE_FILE:
        if values:
            raise RequestError(
                errors.INVALID_ARGUMENT,
                "trace_file is not supported: traces are exported over OTLP "
                "(OTEL_EXPORTER_OTLP_ENDPOINT), never to a file",
            )
        return None
    if key not in SETTINGS:
        raise RequestError(errors.INVALID_ARGUMENT, f"unknown trace setting {names.quote(key)}")
    if not values:
        return None
    if key == LEVEL:
        levels = set(values)
        unknown = levels - {OFF, TIMESTAMPS, TENSORS}
        if unknown:
            raise RequestError(
                errors.INVALID_ARGUMENT,
                f"unknown trace_level {names.quote(sorted(unknown)[0])} "
                "(OFF, TIMESTAMPS or TENSORS)",
            )
        if TENSORS in levels:
            raise RequestError(
                errors.INVALID_ARGUMENT,
                "trace_level TENSORS is not supported: spans carry timings, never tensor data",
            )
        if OFF in levels and len(levels) > 1:
            raise RequestError(errors.INVALID_ARGUMENT, "trace_level OFF cannot be combined")
        return OFF if OFF in levels else TIMESTAMPS
    if len(values) != 1:
        raise RequestError(errors.INVALID_ARGUMENT, f"{key} takes one value, got {len(values)}")
    try:
        number = int(values[0])
    except ValueError:
        raise RequestError(
            errors.INVALID_ARGUMENT, f"{key} must be an integer, got {names.quote(values[0])}"
        ) from None
    lowest = {RATE: 1, COUNT: UNLIMITED, LOG_FREQUENCY: 0}[key]
    if number < lowest:
        raise RequestError(errors.INVALID_ARGUMENT, f"{key} must be >= {lowest}, got {number}")
    return number


def answer(
    settings: TraceSettings, request: pb.TraceSettingRequest, models: Collection[str]
) -> pb.TraceSettingResponse:
    """The TraceSetting RPC: apply the request's changes (if any) and report the settings in
    effect. Raises RequestError (unknown model, bad value, tracing not configured)."""
    model = request.model_name
    if model:
        names.check_model(model)
        if model not in models:
            raise RequestError(errors.NOT_FOUND, f"Request for unknown model : {model}")
    if request.settings:
        if not settings.enabled:
            raise RequestError(
                errors.FAILED_PRECONDITION,
                "tracing is not configured: set OTEL_EXPORTER_OTLP_ENDPOINT (or "
                "OTEL_TRACES_EXPORTER) before starting the frontend",
            )
        settings.update(model, {k: list(v.value) for k, v in request.settings.items()})
    response = pb.TraceSettingResponse()
    for key, values in settings.values(model).items():
        response.settings[key].value.extend(values)
    return response
