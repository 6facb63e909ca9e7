"""Triton's classification extension: an output requested with the ``classification``
parameter (``class_count`` in tritonclient) comes back as its top-k classes, as BYTES strings
``"value:index"`` or ``"value:index:label"``, labels read from the output's ``label_filename``
in the model directory.

The format follows Triton's server src/classification.cc (AddClassResults): ``value`` is C++
``std::to_string`` of the element (six decimals for FP32/FP64, a plain integer otherwise),
classes are ordered by value, highest first, and there are ``min(k, elements)`` of them per
batch row. Triton refuses the same datatypes we do (BOOL, FP16, BF16, BYTES).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fabric.errors import INVALID_ARGUMENT, RequestError

Labels = tuple[tuple[str, tuple[str, ...]], ...]  # (output name, labels by class index)

_SUPPORTED = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"}
)
MAX_LABEL_FILE_BYTES = 16 * 1024 * 1024


class LabelFileError(Exception):
    """A ``label_filename`` that names no readable file in the model directory."""


def check_datatype(datatype: str) -> None:
    """Raise Triton's error for an output whose datatype has no classes."""
    if datatype not in _SUPPORTED:
        raise RequestError(
            INVALID_ARGUMENT,
            f"class result not available for output due to unsupported type '{datatype}'",
        )


def read_labels(model_dir: Path, outputs: list[tuple[str, str]]) -> Labels:
    """Labels of each (output name, label_filename) with a file name; the file is one label a
    line, in the model directory itself (a name with a path in it is refused)."""
    out = []
    for name, filename in outputs:
        if not filename:
            continue
        if filename in (".", "..") or "/" in filename or "\\" in filename or "\0" in filename:
            raise LabelFileError(
                f"output '{name}': label_filename '{filename}' must be a file name in the "
                "model directory"
            )
        path = model_dir / filename
        try:
            if path.stat().st_size > MAX_LABEL_FILE_BYTES:
                raise LabelFileError(f"output '{name}': {filename} is over 16 MiB")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabelFileError(f"output '{name}': cannot read {filename}: {exc}") from exc
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        out.append((name, tuple(lines)))
    return tuple(out)


def classify(array: np.ndarray, count: int, labels: tuple[str, ...], batched: bool) -> np.ndarray:
    """The top ``count`` classes of ``array`` (per row of dim 0 when ``batched``) as an object
    array of ``bytes``, shape [rows, k] or [k]."""
    rows = array.reshape(array.shape[0] if batched else 1, -1)
    k = min(count, rows.shape[1])
    floating = array.dtype.kind == "f"
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, row in enumerate(rows):
        # Stable, highest first: equal values keep index order (Triton's std::sort leaves
        # that unspecified).
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, index in enumerate(order.tolist()):
            value = row[index]
            text = f"{float(value):f}" if floating else str(int(value))
            text = f"{text}:{index}"
            if index < len(labels) and labels[index]:
                text = f"{text}:{labels[index]}"
            out[r, j] = text.encode()
    return out if batched else out[0]
