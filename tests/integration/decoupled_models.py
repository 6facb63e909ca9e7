"""A decoupled test model for the end-to-end tests (written into ``model_repo`` by conftest).

``trickle``: COUNT INT32 [1], SIZE INT32 [1] → COUNT responses, each DATA UINT8 [SIZE] (all
bytes equal to the index mod 256) and IDX UINT32 [1]. After each response is taken from the
generator it writes how many it produced to ``progress`` next to its model file, so a test can
see whether generation paused for a slow reader.
"""

from __future__ import annotations

TRICKLE_CONFIG = """\
name: "trickle"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "SIZE" data_type: TYPE_INT32 dims: [ 1 ] }
]
output [
  { name: "DATA" data_type: TYPE_UINT8 dims: [ -1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
"""

TRICKLE_MODEL = '''\
"""Yields COUNT responses of SIZE bytes; records its progress in a file."""

import os
from pathlib import Path

import numpy as np

PROGRESS = Path(__file__).parent / "progress"


def record(done):
    # Replaced whole, so that a reader never sees a half-written file.
    partial = PROGRESS.with_suffix(".partial")
    partial.write_text(str(done))
    os.replace(partial, PROGRESS)


class Model:
    def load(self, config, device):
        record(0)

    def execute(self, inputs):
        count = int(inputs["COUNT"][0])
        size = int(inputs["SIZE"][0])
        for index in range(count):
            record(index)
            yield {
                "DATA": np.full(size, index % 256, dtype=np.uint8),
                "IDX": np.array([index], dtype=np.uint32),
            }
        record(count)
'''
