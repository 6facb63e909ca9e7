"""Per model-version execution statistics, in the units of Triton's statistics extension."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from protos import grpc_service_pb2 as pb


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Updated by compute threads, read by the control thread; guarded by one lock.

    Counts follow Triton: ``success``/``fail``/``queue``/``compute_*`` count requests, with
    the time each request spent; ``execution_count`` counts batches, ``inference_count`` rows.
    Requests that expired or were cancelled before their batch are counted apart: they never
    ran, so they appear in no execution figure.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    expired: int = 0
    cancelled: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStat] = field(default_factory=dict)  # by batch size in rows
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(
        self,
        requests: int,
        rows: int,
        queue_s: float,
        input_s: float,
        infer_s: float,
        output_s: float,
        request_s: float,
    ) -> None:
        """One executed batch; ``queue_s`` and ``request_s`` are summed over its requests."""
        with self._lock:
            self.success.add(request_s, requests)
            self.queue.add(queue_s, requests)
            self.compute_input.add(input_s * requests, requests)
            self.compute_infer.add(infer_s * requests, requests)
            self.compute_output.add(output_s * requests, requests)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = time.time_ns() // 1_000_000
            stat = self.batches.setdefault(rows, BatchStat())
            stat.compute_input.add(input_s)
            stat.compute_infer.add(infer_s)
            stat.compute_output.add(output_s)

    def record_failure(self, requests: int, request_s: float = 0.0) -> None:
        with self._lock:
            self.fail.add(request_s, requests)

    def record_expired(self) -> None:
        with self._lock:
            self.expired += 1

    def record_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def mean_batch_rows(self) -> float:
        with self._lock:
            return self.inference_count / self.execution_count if self.execution_count else 0.0

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        def d(x: Duration) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=x.count, ns=x.ns)

        with self._lock:
            return pb.ModelStatistics(
                name=name,
                version=version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                inference_stats=pb.InferStatistics(
                    success=d(self.success),
                    fail=d(self.fail),
                    queue=d(self.queue),
                    compute_input=d(self.compute_input),
                    compute_infer=d(self.compute_infer),
                    compute_output=d(self.compute_output),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(
                        batch_size=size,
                        compute_input=d(b.compute_input),
                        compute_infer=d(b.compute_infer),
                        compute_output=d(b.compute_output),
                    )
                    for size, b in sorted(self.batches.items())
                ],
            )
