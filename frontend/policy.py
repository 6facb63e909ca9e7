"""Per-model request policy read from the model's config, and recent-latency tracking for
hedging. Plain classes, no I/O.

Model config ``parameters`` understood here (string values, as Triton's config allows):
- ``idempotent: "false"``: never re-run a request a worker may have started (no requeue,
  no retry after the worker accepted it, no hedging);
- ``hedge_after_ms: "<ms>"`` or ``"p95"``: send a second copy to another worker when the
  first has not answered after that long (off by default).
``dynamic_batching.default_queue_policy.default_timeout_microseconds`` becomes the default
deadline of calls that set none.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from fabric.protocol import FLAG_NON_IDEMPOTENT
from protos import model_config_pb2 as mc

P95_MIN_SAMPLES = 50
P95_WINDOW = 512
MIN_HEDGE_DELAY_S = 0.001


@dataclass(frozen=True)
class ModelPolicy:
    flags: int = 0
    default_timeout_s: float | None = None
    hedge_after_s: float | None = None  # fixed delay
    hedge_p95: bool = False

    @property
    def idempotent(self) -> bool:
        return not self.flags & FLAG_NON_IDEMPOTENT


DEFAULT_POLICY = ModelPolicy()


def policy_from_config(config: mc.ModelConfig) -> ModelPolicy:
    params = {k: v.string_value.strip().lower() for k, v in config.parameters.items()}
    flags = FLAG_NON_IDEMPOTENT if params.get("idempotent") in ("false", "0", "no") else 0
    hedge_after_s = None
    hedge_p95 = False
    hedge = params.get("hedge_after_ms", "")
    if flags & FLAG_NON_IDEMPOTENT:
        hedge = ""
    if hedge == "p95":
        hedge_p95 = True
    elif hedge:
        try:
            hedge_after_s = max(MIN_HEDGE_DELAY_S, float(hedge) / 1000)
        except ValueError:
            hedge_after_s = None
    timeout_us = config.dynamic_batching.default_queue_policy.default_timeout_microseconds
    return ModelPolicy(
        flags=flags,
        default_timeout_s=timeout_us / 1e6 if timeout_us > 0 else None,
        hedge_after_s=hedge_after_s,
        hedge_p95=hedge_p95,
    )


class LatencyTracker:
    """Recent successful latencies of one model; p95 recomputed every few samples."""

    def __init__(self, window: int = P95_WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._since = 0
        self._p95: float | None = None

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._since += 1
        if self._since >= 32 and len(self._samples) >= P95_MIN_SAMPLES:
            ordered = sorted(self._samples)
            self._p95 = ordered[int(0.95 * (len(ordered) - 1))]
            self._since = 0

    def p95(self) -> float | None:
        return self._p95

    def hedge_delay_s(self, policy: ModelPolicy) -> float | None:
        if policy.hedge_after_s is not None:
            return policy.hedge_after_s
        if policy.hedge_p95 and self._p95 is not None:
            return max(MIN_HEDGE_DELAY_S, self._p95)
        return None
