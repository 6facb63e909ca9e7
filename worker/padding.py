"""Opt-in padding for models with variable-length inputs: requests whose variable dims differ
are padded to the longest in the batch instead of running in separate batches.

A model opts in with ``parameters { key: "pad_to_longest" value { string_value: "true" } }``
(and ``pad_value``, default 0). Only inputs' ``-1`` dims are padded, at their end. The model
sees the padded batch; each request gets back its own rows with every output ``-1`` dim that
has the padded length of the same axis of an input cut back to that request's own length
(the usual sequence case: input [B, T], output [B, T] or [B, T, H]).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .codec import DecodedRequest
from .model_config import ModelSpec


def padding_enabled(spec: ModelSpec) -> bool:
    params = spec.config.parameters
    wanted = (
        params["pad_to_longest"].string_value.strip().lower() if "pad_to_longest" in params else ""
    )
    variable = any(-1 in t.dims for t in spec.inputs)
    numeric = all(t.datatype != "BYTES" for t in spec.inputs)
    return spec.max_batch_size > 0 and wanted in ("true", "1", "yes") and variable and numeric


def pad_value(spec: ModelSpec) -> float:
    params = spec.config.parameters
    return float(params["pad_value"].string_value) if "pad_value" in params else 0.0


def padded_signature(request: DecodedRequest, spec: ModelSpec) -> Hashable:
    """Like ``batch_signature`` but blind to the sizes of variable dims."""
    return tuple(
        (
            t.name,
            a.dtype.str,
            tuple(-1 if d < 0 else n for n, d in zip(a.shape[1:], t.dims, strict=True)),
        )
        for t, a in zip(spec.inputs, request.inputs.values(), strict=True)
    )


def pad_and_concat(
    requests: Sequence[DecodedRequest], spec: ModelSpec, value: float
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """The batch, and the padded non-batch shape of each input."""
    batch: dict[str, np.ndarray] = {}
    padded: dict[str, tuple[int, ...]] = {}
    for t in spec.inputs:
        arrays = [r.inputs[t.name] for r in requests]
        longest = tuple(max(a.shape[1 + k] for a in arrays) for k in range(len(t.dims)))
        padded[t.name] = longest
        parts = []
        for a in arrays:
            widths = [(0, 0)] + [(0, n - s) for n, s in zip(longest, a.shape[1:], strict=True)]
            parts.append(
                np.pad(a, widths, constant_values=value) if any(w for _, w in widths) else a
            )
        batch[t.name] = np.concatenate(parts, axis=0)
    return batch, padded


def trim(
    outputs: dict[str, np.ndarray],
    request: DecodedRequest,
    spec: ModelSpec,
    padded: dict[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Cut one request's outputs back from the padded lengths to its own."""
    own = {name: a.shape[1:] for name, a in request.inputs.items()}
    out: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        tensor = spec.output_by_name.get(name)
        index: list[slice] = [slice(None)]
        for axis, dim in enumerate(tensor.dims if tensor is not None else ()):
            stop = None
            if dim < 0 and axis + 1 < value.ndim:
                for t in spec.inputs:
                    if (
                        axis < len(t.dims)
                        and t.dims[axis] < 0
                        and value.shape[axis + 1] == padded[t.name][axis]
                    ):
                        stop = own[t.name][axis]
                        break
            index.append(slice(None, stop))
        out[name] = value[tuple(index)]
    return out
