"""Warm-up of a freshly loaded model version.

Two kinds, with different stakes:

- ``model_warmup`` samples from the model's config (Triton's semantics): each sample's inputs
  (``zero_data``, ``random_data`` or ``input_data_file`` under ``<model>/warmup/``) are run
  ``count`` times (at least once) before the version is announced; a failure fails the load, as
  in Triton, because the operator asked for exactly these inputs.
- the default warm-up of a tensor model (TorchScript, torch.export) with one row of zeros, so the
  first request pays no lazy initialisation, and timed to decide whether the model may run
  inline. Zeros are our choice, not the operator's: a model that refuses them is still valid, so
  this one never fails a load (it is logged, and the model just does not run inline).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from protos import model_config_pb2 as mc
from worker.codec import decode_bytes_tensor
from worker.loaders import LoadedModel
from worker.model_config import TensorSpec

logger = logging.getLogger(__name__)

WARMUP_DIR = "warmup"  # Triton's: input_data_file names a file in <model>/warmup/
_RANDOM = np.random.default_rng(0)


class WarmupError(Exception):
    """A ``model_warmup`` sample could not be built or run; the load fails."""


def run_config_warmup(model: LoadedModel, model_dir: Path) -> None:
    """Run the config's ``model_warmup`` samples; raises ``WarmupError``."""
    spec = model.spec
    for sample in spec.config.model_warmup:
        label = sample.name or "warmup"
        try:
            inputs = _sample_inputs(model, model_dir, sample)
            for _ in range(max(1, sample.count)):
                model.execute(inputs)
        except WarmupError:
            raise
        except Exception as exc:
            raise WarmupError(f"warm-up sample '{label}' failed: {exc}") from exc
        logger.info("model %s: warm-up sample '%s' ran", spec.name, label)


def default_warm_up(model: LoadedModel, timed: bool = False) -> float | None:
    """One row of zeros through a tensor model; with ``timed``, three more calls and the seconds
    the fastest took. None when not timed, for Python models (their first call is theirs to
    prepare for), for models with BYTES inputs, and when the model refuses zeros."""
    spec = model.spec
    if not model.shape_bound or any(t.datatype == "BYTES" for t in spec.inputs):
        return None
    batch = (1,) if spec.max_batch_size > 0 else ()
    inputs = {
        t.name: np.zeros(batch + tuple(1 if d < 0 else d for d in t.dims), dtype=t.numpy_dtype)
        for t in spec.inputs
    }
    try:
        model.execute(inputs)
        if not timed:
            return None
        fastest = float("inf")
        for _ in range(3):
            start = time.monotonic()
            model.execute(inputs)
            fastest = min(fastest, time.monotonic() - start)
    except Exception as exc:  # zeros are our choice: a model may refuse them and still be valid
        logger.warning(
            "model %s version %s: zero warm-up refused (%s); serving it anyway, not inline",
            spec.name,
            model.version,
            exc,
        )
        return None
    return fastest


def _sample_inputs(
    model: LoadedModel, model_dir: Path, sample: mc.ModelWarmup
) -> dict[str, np.ndarray]:
    spec = model.spec
    batch = sample.batch_size
    if spec.max_batch_size > 0 and not 1 <= batch <= spec.max_batch_size:
        raise WarmupError(
            f"warm-up sample '{sample.name}': batch_size {batch} is outside "
            f"1..{spec.max_batch_size}"
        )
    given = sample.inputs
    missing = [t.name for t in spec.inputs if t.name not in given]
    if missing:
        raise WarmupError(f"warm-up sample gives no data for input(s) {missing}")
    out: dict[str, np.ndarray] = {}
    for tspec in spec.inputs:
        item = given[tspec.name]
        dims = tuple(int(d) for d in item.dims)
        shape = ((batch,) if spec.max_batch_size > 0 else ()) + dims
        count = int(np.prod(shape)) if shape else 1
        if any(d < 0 for d in dims):
            raise WarmupError(f"warm-up input '{tspec.name}': dims {list(dims)} must be known")
        which = item.WhichOneof("input_data_type")
        if which == "input_data_file":
            out[tspec.name] = _from_file(model_dir, item.input_data_file, tspec, shape, count)
        elif tspec.datatype == "BYTES":
            # Triton's zero/random strings: empty elements.
            array = np.empty(count, dtype=object)
            array[:] = [b""] * count
            out[tspec.name] = array.reshape(shape)
        elif which == "random_data":
            raw = _RANDOM.integers(0, 256, count * tspec.byte_size, dtype=np.uint8).tobytes()
            array = np.frombuffer(raw, dtype=tspec.numpy_dtype).copy()
            if array.dtype.kind == "f":  # random bits make NaNs and infinities
                array = _RANDOM.random(count).astype(tspec.numpy_dtype)
            out[tspec.name] = array.reshape(shape)
        else:
            out[tspec.name] = np.zeros(shape, dtype=tspec.numpy_dtype)
    return out


def _from_file(
    model_dir: Path, filename: str, tspec: TensorSpec, shape: tuple[int, ...], count: int
) -> np.ndarray:
    name = tspec.name
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
        raise WarmupError(
            f"warm-up input '{name}': input_data_file '{filename}' must be a file name in "
            f"{WARMUP_DIR}/"
        )
    path = model_dir / WARMUP_DIR / filename
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WarmupError(f"warm-up input '{name}': cannot read {WARMUP_DIR}/{filename}") from exc
    if tspec.datatype == "BYTES":
        return decode_bytes_tensor(data, count, name).reshape(shape)
    needed = count * tspec.byte_size
    if len(data) < needed:
        raise WarmupError(
            f"warm-up input '{name}': {WARMUP_DIR}/{filename} holds {len(data)} bytes, "
            f"{needed} needed"
        )
    return np.frombuffer(data[:needed], dtype=tspec.numpy_dtype).reshape(shape)
