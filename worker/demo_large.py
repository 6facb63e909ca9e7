"""The large-tensor demo model, built from code into the demo repository.

``identity_fp32``: INPUT0 FP32 [-1] → OUTPUT0, the same tensor (TorchScript ``model.pt``,
max_batch_size 8, dynamic batching; an idle instance runs a request at once). It measures what
serving costs per byte: the model does nothing, so every microsecond of a call is the fabric's
and the codec's. A request of one row is never concatenated, and TorchScript returns its input
tensor itself, so the output shares memory with the request's buffer until the reply is built.
``python -m worker.demo_models`` writes it with the other demo models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

IDENTITY_CONFIG = """\
name: "identity_fp32"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 100
}
parameters {
  key: "dispatch_when_idle"
  value { string_value: "true" }
}
"""


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def build(out: Path) -> list[Path]:
    """Write ``identity_fp32`` under the repository ``out``; returns the files."""
    config = out / "identity_fp32" / "config.pbtxt"
    model = out / "identity_fp32" / "1" / "model.pt"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(IDENTITY_CONFIG, encoding="utf-8")
    model.parent.mkdir(parents=True, exist_ok=True)
    # torch.jit is deprecated upstream, but TorchScript is what this demo shows serving.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
        torch.jit.save(torch.jit.script(Identity()), str(model))
    return [config, model]
