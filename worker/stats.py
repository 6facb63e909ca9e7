"""Per model-version execution statistics, in the units of Triton's statistics extension."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class BatchStat:
    count: int = 0
    compute_ns: int = 0


@dataclass
class ModelStats:
    """Updated by compute threads, read by the I/O thread; guarded by one lock."""

    success: int = 0
    failure: int = 0
    expired: int = 0
    cancelled: int = 0
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    queue_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    batches: dict[int, BatchStat] = field(default_factory=dict)  # by batch size in rows
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(
        self, requests: int, rows: int, queue_s: float, compute_s: float, output_s: float
    ) -> None:
        with self._lock:
            self.success += requests
            self.inference_count += rows
            self.execution_count += 1
            self.queue_ns += int(queue_s * 1e9)
            self.compute_infer_ns += int(compute_s * 1e9)
            self.compute_output_ns += int(output_s * 1e9)
            stat = self.batches.setdefault(rows, BatchStat())
            stat.count += 1
            stat.compute_ns += int(compute_s * 1e9)

    def record_failure(self, requests: int) -> None:
        with self._lock:
            self.failure += requests

    def mean_batch_rows(self) -> float:
        with self._lock:
            return self.inference_count / self.execution_count if self.execution_count else 0.0
