"""A counter family whose samples keep Triton's exact names (``nv_inference_count``, not
``nv_inference_count_total`` as prometheus_client would write), so Triton dashboards work."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric


class TritonCounter(Metric):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._label_names = list(labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._label_names, labels, strict=True)), value)
