"""Prometheus metrics of a worker, with Triton's names, read from the model statistics at
scrape time: nothing is added to the request path.

Per model version (labels ``model``, ``version``): Triton's request, inference and execution
counts and cumulative queue / compute input / infer / output times, pending requests, a
batch-size histogram (exact: built from the per-size batch counts), dropped requests, and the
load state. On CUDA, the device's utilisation and memory (``worker.gpu_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fabric import prom
from fabric.prom import BATCH_SIZE_BUCKETS, Buckets, TritonCounter

from .gpu_metrics import GpuProbe
from .models import ModelTable

_LABELS = ["model", "version"]


class WorkerCollector(Collector):
    """Reads ``models`` (set once the worker has made its table) and the GPU probe."""

    def __init__(self, models: ModelTable | None = None, gpu: GpuProbe | None = None) -> None:
        self.models = models
        self.gpu = gpu

    def collect(self) -> Iterator[Metric]:
        if self.models is not None:
            yield from self._model_metrics(self.models)
        if self.gpu is not None:
            yield from self.gpu.collect()

    @staticmethod
    def _model_metrics(models: ModelTable) -> Iterator[Metric]:
        def counter(name: str, doc: str) -> TritonCounter:
            return TritonCounter(name, doc, _LABELS)

        success = counter("nv_inference_request_success", "Successful inference requests")
        failure = counter("nv_inference_request_failure", "Failed inference requests")
        count = counter("nv_inference_count", "Inferences performed (rows)")
        execs = counter("nv_inference_exec_count", "Model executions (batches)")
        request_us = counter("nv_inference_request_duration_us", "Request time in the worker, µs")
        queue_us = counter("nv_inference_queue_duration_us", "Time waiting for a batch, µs")
        input_us = counter(
            "nv_inference_compute_input_duration_us", "Time preparing batch inputs, µs"
        )
        infer_us = counter("nv_inference_compute_infer_duration_us", "Model compute time, µs")
        output_us = counter(
            "nv_inference_compute_output_duration_us", "Time splitting and encoding outputs, µs"
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "Requests held by the model", labels=_LABELS
        )
        dropped = CounterMetricFamily(
            "fabric_worker_requests_dropped",
            "Requests never run: deadline passed or cancelled before their batch",
            labels=[*_LABELS, "reason"],
        )
        ready = GaugeMetricFamily(
            "fabric_worker_model_ready",
            "1 for each model version loaded and served",
            labels=_LABELS,
        )
        failed = GaugeMetricFamily(
            "fabric_worker_model_load_failed",
            "1 for each model (version) whose last load failed",
            labels=_LABELS,
        )
        sizes: list[tuple[list[str], Buckets]] = []
        for (name, version), served in sorted(models.served.items()):
            s = served.stats
            labels = [name, version]
            batch_sizes = Buckets(BATCH_SIZE_BUCKETS)
            with s._lock:
                success.add_metric(labels, s.success.count)
                failure.add_metric(labels, s.fail.count)
                count.add_metric(labels, s.inference_count)
                execs.add_metric(labels, s.execution_count)
                request_us.add_metric(labels, (s.success.ns + s.fail.ns) / 1000)
                queue_us.add_metric(labels, s.queue.ns / 1000)
                input_us.add_metric(labels, s.compute_input.ns / 1000)
                infer_us.add_metric(labels, s.compute_infer.ns / 1000)
                output_us.add_metric(labels, s.compute_output.ns / 1000)
                dropped.add_metric([*labels, "expired"], s.expired)
                dropped.add_metric([*labels, "cancelled"], s.cancelled)
                for size, b in s.batches.items():
                    batch_sizes.observe(size, b.compute_infer.count)
            sizes.append((labels, batch_sizes))
            pending.add_metric(labels, served.pending)
            ready.add_metric(labels, 1)
        for key in sorted(models.load_errors):
            name, _, version = key.partition(":")
            failed.add_metric([name, version], 1)
        batch_size = prom.histogram(
            "fabric_worker_batch_size", "Rows per executed batch", _LABELS, sizes
        )
        yield from (success, failure, count, execs, request_us, queue_us, input_us, infer_us,
                    output_us, pending, batch_size, dropped, ready, failed)  # fmt: skip


def serve_metrics(
    models: ModelTable | None, host: str, port: int, device: str = "cpu"
) -> tuple[WorkerCollector, prom.MetricsEndpoint]:
    """Start the endpoint; ``collector.models`` may be set later (the port is taken first, so
    a taken port fails before any model loads)."""
    collector = WorkerCollector(models, GpuProbe.open(device))
    return collector, prom.serve(collector, host, port, "worker")
