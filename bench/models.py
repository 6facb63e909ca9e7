"""The benchmark models: their width (FP32 values per row of INPUT0 and OUTPUT0) and a blurb.

``mlp`` and ``mlp_wait`` come from ``python -m worker.demo_models``; ``wide_mlp`` from
``python -m bench.wide_model``. ``mlp_wait`` is the same network as ``mlp`` configured to wait its
``max_queue_delay_microseconds`` for a fuller batch, where ``mlp`` dispatches to an idle instance
at once; older model repositories do not have it.
"""

from __future__ import annotations

MODELS: dict[str, int] = {"mlp": 256, "mlp_wait": 256, "wide_mlp": 1024}
MODEL_BLURB: dict[str, str] = {
    "mlp": "FP32 Linear(256,256)-ReLU-Linear(256,256), the demo model (serving-bound)",
    "mlp_wait": "the `mlp` network, waiting its max_queue_delay_microseconds for a fuller batch",
    "wide_mlp": "FP32 Linear(1024,4096)-ReLU-Linear(4096,1024), seed 0 (compute-bound)",
}
OPTIONAL_MODELS = frozenset({"mlp_wait"})
"""Models measured only where the built repository has them (skipped with a note otherwise)."""
