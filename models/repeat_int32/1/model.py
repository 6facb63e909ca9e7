"""Triton's repeat example: one response per element of IN, DELAY[i] ms apart, then WAIT ms.

A decoupled model: ``execute`` is a generator, each value it yields one response. Generated
by ``python -m worker.demo_models``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from fabric.errors import INVALID_ARGUMENT, RequestError


class Model:
    def load(self, config: object, device: str) -> None:
        self.device = device

    def execute(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        values = inputs["IN"].reshape(-1)
        delays = inputs["DELAY"].reshape(-1)
        if len(delays) != len(values):
            raise RequestError(
                INVALID_ARGUMENT,
                f"DELAY has {len(delays)} elements, IN has {len(values)}: they must match",
            )
        for index, (value, delay_ms) in enumerate(zip(values, delays, strict=True)):
            time.sleep(int(delay_ms) / 1000)
            yield {
                "OUT": np.array([value], dtype=np.int32),
                "IDX": np.array([index], dtype=np.uint32),
            }
        time.sleep(int(inputs["WAIT"].reshape(-1)[0]) / 1000)
