"""The compute-heavy benchmark model, built from code with a fixed seed: ``wide_mlp``.

FP32 Linear(1024, 4096)-ReLU-Linear(4096, 1024) seeded with ``torch.manual_seed(0)`` (about
16.8 MFLOP per row, 32 MiB of weights), saved as TorchScript in Triton layout next to the demo
models, with the same batching settings as ``mlp``: ``max_batch_size: 64`` and
``dynamic_batching { max_queue_delay_microseconds: 500 }`` with ``dispatch_when_idle``.
Where ``mlp`` is so cheap that the serving path dominates, this one makes the model the slow
stage, so batches grow and the worker's compute per row can be compared with the model called
in-process.

    python -m bench.wide_model REPO_DIR     # writes REPO_DIR/wide_mlp/{config.pbtxt,1/model.pt}
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

NAME = "wide_mlp"
WIDTH = 1024
HIDDEN = 4096
SEED = 0

CONFIG = f"""\
name: "{NAME}"
platform: "pytorch_libtorch"
max_batch_size: 64
input [
  {{
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ {WIDTH} ]
  }}
]
output [
  {{
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ {WIDTH} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 500
}}
parameters {{
  key: "dispatch_when_idle"
  value {{ string_value: "true" }}
}}
"""


def make_model():
    """The network with its seeded weights, in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, WIDTH)).eval()


def build(repo: Path) -> Path:
    """Write ``repo/wide_mlp``; returns the model file."""
    import torch

    model_dir = repo / NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(CONFIG, encoding="utf-8")
    path = model_dir / "1" / "model.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(make_model()), str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="model repository directory")
    args = parser.parse_args(argv)
    print(build(args.repo))


if __name__ == "__main__":
    main()
