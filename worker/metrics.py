"""Prometheus metrics of a worker, with Triton's names, read from the model statistics at
scrape time: nothing is added to the request path."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fabric.prom import TritonCounter

from .models import ModelTable

_LABELS = ["model", "version"]


class WorkerCollector(Collector):
    def __init__(self, models: ModelTable) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        success = TritonCounter(
            "nv_inference_request_success", "Successful inference requests", _LABELS
        )
        failure = TritonCounter(
            "nv_inference_request_failure", "Failed inference requests", _LABELS
        )
        count = TritonCounter("nv_inference_count", "Inferences performed (rows)", _LABELS)
        execs = TritonCounter("nv_inference_exec_count", "Model executions (batches)", _LABELS)
        request_us = TritonCounter(
            "nv_inference_request_duration_us", "Request time in the worker, µs", _LABELS
        )
        queue_us = TritonCounter(
            "nv_inference_queue_duration_us", "Time waiting for a batch, µs", _LABELS
        )
        infer_us = TritonCounter(
            "nv_inference_compute_infer_duration_us", "Model compute time, µs", _LABELS
        )
        dropped = CounterMetricFamily(
            "fabric_worker_requests_dropped",
            "Requests never run: deadline passed or cancelled before their batch",
            labels=[*_LABELS, "reason"],
        )
        batches = CounterMetricFamily(
            "fabric_worker_batches", "Executed batches by size in rows", labels=[*_LABELS, "size"]
        )
        pending = GaugeMetricFamily(
            "fabric_worker_pending_requests", "Requests held by the model", labels=_LABELS
        )
        for (name, version), served in sorted(self._models.served.items()):
            s = served.stats
            labels = [name, version]
            with s._lock:
                success.add_metric(labels, s.success.count)
                failure.add_metric(labels, s.fail.count)
                count.add_metric(labels, s.inference_count)
                execs.add_metric(labels, s.execution_count)
                request_us.add_metric(labels, (s.success.ns + s.fail.ns) / 1000)
                queue_us.add_metric(labels, s.queue.ns / 1000)
                infer_us.add_metric(labels, s.compute_infer.ns / 1000)
                dropped.add_metric([*labels, "expired"], s.expired)
                dropped.add_metric([*labels, "cancelled"], s.cancelled)
                for size, b in sorted(s.batches.items()):
                    batches.add_metric([*labels, str(size)], b.compute_infer.count)
            pending.add_metric(labels, served.pending)
        yield from (success, failure, count, execs, request_us, queue_us, infer_us, dropped,
                    batches, pending)  # fmt: skip


def serve_metrics(models: ModelTable, host: str, port: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(models))
    start_http_server(port, addr=host, registry=registry)
    return registry
