"""Read a model's ``config.pbtxt`` into the ``ModelConfig`` proto, validate it, and turn it into
small frozen dataclasses named like Triton's fields; also the datatype table (Triton name ↔
``TYPE_*`` enum ↔ numpy dtype ↔ torch dtype ↔ element size) that the codec and loaders share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import torch
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from worker.sequences import SequenceBatching, parse_sequence_batching

logger = logging.getLogger(__name__)

_Fail: TypeAlias = "Callable[[str], ModelConfigError]"

CONFIG_FILENAME = "config.pbtxt"
DISPATCH_WHEN_IDLE = "dispatch_when_idle"
"""``parameters`` key: "true" runs a batch as soon as the instance is idle, without waiting
for ``max_queue_delay_microseconds`` or a preferred batch size; "false" (default) waits."""
_BOOLEAN_VALUES = {"true": True, "false": False}


@dataclass(frozen=True)
class DataType:
    """One tensor datatype as each layer names it. ``byte_size`` is 0 for variable-size BYTES."""

    name: str
    config_type: int
    numpy_dtype: np.dtype
    torch_dtype: torch.dtype | None
    byte_size: int


def _datatype(
    name: str, config_type: int, np_type: str, torch_type: torch.dtype | None
) -> DataType:
    # Little-endian explicitly: it is the wire order of raw contents (and the host order on
    # every platform torch serves on, so no byte swapping ever happens).
    dtype = np.dtype(np_type)
    size = 0 if dtype == np.dtype(object) else dtype.itemsize
    return DataType(name, config_type, dtype, torch_type, size)


DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        _datatype("BOOL", mc.TYPE_BOOL, "?", torch.bool),
        _datatype("UINT8", mc.TYPE_UINT8, "u1", torch.uint8),
        _datatype("UINT16", mc.TYPE_UINT16, "<u2", torch.uint16),
        _datatype("UINT32", mc.TYPE_UINT32, "<u4", torch.uint32),
        _datatype("UINT64", mc.TYPE_UINT64, "<u8", torch.uint64),
        _datatype("INT8", mc.TYPE_INT8, "i1", torch.int8),
        _datatype("INT16", mc.TYPE_INT16, "<i2", torch.int16),
        _datatype("INT32", mc.TYPE_INT32, "<i4", torch.int32),
        _datatype("INT64", mc.TYPE_INT64, "<i8", torch.int64),
        _datatype("FP16", mc.TYPE_FP16, "<f2", torch.float16),
        _datatype("FP32", mc.TYPE_FP32, "<f4", torch.float32),
        _datatype("FP64", mc.TYPE_FP64, "<f8", torch.float64),
        _datatype("BYTES", mc.TYPE_STRING, "O", None),
    )
}
"""Triton datatype name → DataType, for every datatype this server accepts."""

CONFIG_TYPE_TO_NAME: dict[int, str] = {dt.config_type: dt.name for dt in DATATYPES.values()}
"""``mc.TYPE_*`` enum value → Triton datatype name ("INT32", "BYTES", ...)."""

NAME_TO_CONFIG_TYPE: dict[str, int] = {dt.name: dt.config_type for dt in DATATYPES.values()}

_NUMPY_TO_NAME: dict[np.dtype, str] = {dt.numpy_dtype: dt.name for dt in DATATYPES.values()}


def datatype_of_numpy(dtype: np.dtype) -> str | None:
    """The Triton name for a numpy dtype (str/bytes arrays count as BYTES), or None if none fits."""
    if dtype.kind in "SUO":
        return "BYTES"
    return _NUMPY_TO_NAME.get(dtype)


class ModelConfigError(Exception):
    """A model's configuration cannot be used; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``dims`` excludes the batch dimension; -1 matches any size.

    ``numpy_dtype``, ``byte_size`` (0 for BYTES) and ``fixed_shape`` (no -1 in dims) are derived.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    numpy_dtype: np.dtype = field(init=False, repr=False, compare=False)
    byte_size: int = field(init=False, repr=False, compare=False)
    fixed_shape: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dt = DATATYPES[self.datatype]
        object.__setattr__(self, "numpy_dtype", dt.numpy_dtype)
        object.__setattr__(self, "byte_size", dt.byte_size)
        object.__setattr__(self, "fixed_shape", -1 not in self.dims)


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's ``dynamic_batching`` block: how long requests may wait to form a batch."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    default_timeout_microseconds: int = 0
    max_queue_size: int = 0


@dataclass(frozen=True)
class VersionPolicy:
    """Which numbered versions to serve: the ``latest`` N, ``all``, or ``specific`` ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those present, ascending."""
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]


@dataclass(frozen=True)
class ModelSpec:
    """A validated model configuration; ``config`` is the proto it came from (name filled in)."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    version_policy: VersionPolicy = VersionPolicy()
    platform: str = ""
    backend: str = ""
    default_model_filename: str = ""
    dispatch_when_idle: bool = False  # parameters["dispatch_when_idle"]; see DISPATCH_WHEN_IDLE
    # (output name, labels by class index) from each output's label_filename (classification)
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig, repr=False, compare=False)
    sequence_batching: SequenceBatching | None = None  # see worker.sequences
    decoupled: bool = False  # model_transaction_policy.decoupled: execute yields responses
    input_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    input_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", tuple(t.name for t in self.inputs))
        object.__setattr__(self, "input_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "output_by_name", {t.name: t for t in self.outputs})

    @property
    def batched(self) -> bool:
        """True when dim 0 of every tensor is the batch dimension."""
        return self.max_batch_size > 0


def load_model_config(model_dir: str | Path) -> ModelSpec:
    """Parse and validate ``<model_dir>/config.pbtxt``; the model name defaults to the dir name."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(path, f"cannot read: {exc}") from exc
    return parse_model_config(text, model_dir.name, path)


def parse_model_config(text: str, dir_name: str, path: str | Path = CONFIG_FILENAME) -> ModelSpec:
    """Parse ``config.pbtxt`` text for the model in directory ``dir_name``."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(path, f"cannot parse: {exc}") from exc
    if not config.name:
        config.name = dir_name
    elif config.name != dir_name:
        raise ModelConfigError(
            path, f"name '{config.name}' does not match its directory '{dir_name}'"
        )
    return spec_from_config(config, path)


def spec_from_config(config: mc.ModelConfig, path: str | Path = CONFIG_FILENAME) -> ModelSpec:
    """Validate a ``ModelConfig`` proto and convert it into a ``ModelSpec``."""

    def fail(reason: str) -> ModelConfigError:
        return ModelConfigError(path, reason)

    if not config.name:
        raise fail("model name is empty")
    if config.max_batch_size < 0:
        raise fail(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    if config.HasField("ensemble_scheduling"):
        raise fail("ensemble_scheduling is not supported")
    if not config.input:
        raise fail("no inputs: at least one 'input' is required")
    if not config.output:
        raise fail("no outputs: at least one 'output' is required")
    inputs = tuple(_tensor_spec(t, "input", fail) for t in config.input)
    outputs = tuple(_tensor_spec(t, "output", fail) for t in config.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        seen: set[str] = set()
        for t in tensors:
            if t.name in seen:
                raise fail(f"duplicate {kind} '{t.name}'")
            seen.add(t.name)
    for proto_input in config.input:
        if proto_input.optional:
            raise fail(f"input '{proto_input.name}': optional inputs are not supported")
    return ModelSpec(
        name=config.name,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=_dynamic_batching(config, fail),
        instance_count=_instance_count(config, fail),
        version_policy=_version_policy(config, fail),
        platform=config.platform,
        backend=config.backend,
        default_model_filename=config.default_model_filename,
        dispatch_when_idle=_boolean_parameter(config, DISPATCH_WHEN_IDLE, False, fail),
        config=config,
        sequence_batching=parse_sequence_batching(config, fail),
        decoupled=config.model_transaction_policy.decoupled,
    )


def model_config_bytes(spec: ModelSpec) -> bytes:
    """The serialized ``ModelConfig`` a worker announces (deterministic, so it can be compared)."""
    return spec.config.SerializeToString(deterministic=True)


def _tensor_spec(
    tensor: mc.ModelInput | mc.ModelOutput,
    kind: str,
    fail: _Fail,
) -> TensorSpec:
    if not tensor.name:
        raise fail(f"an {kind} has no name")
    datatype = CONFIG_TYPE_TO_NAME.get(tensor.data_type)
    if datatype is None:
        type_name = mc.DataType.Name(tensor.data_type)
        raise fail(f"{kind} '{tensor.name}': datatype {type_name} is not supported")
    bad = [d for d in tensor.dims if d < -1]
    if bad:
        raise fail(f"{kind} '{tensor.name}': dims must be >= -1, got {list(tensor.dims)}")
    if tensor.HasField("reshape"):
        raise fail(f"{kind} '{tensor.name}': reshape is not supported")
    return TensorSpec(tensor.name, datatype, tuple(tensor.dims))


def _dynamic_batching(config: mc.ModelConfig, fail: _Fail) -> DynamicBatching | None:
    if not config.HasField("dynamic_batching"):
        return None
    db = config.dynamic_batching
    if config.max_batch_size == 0:
        raise fail("dynamic_batching needs max_batch_size > 0")
    for size in db.preferred_batch_size:
        if not 1 <= size <= config.max_batch_size:
            raise fail(
                f"preferred_batch_size {size} is outside 1..max_batch_size "
                f"({config.max_batch_size})"
            )
    policy = db.default_queue_policy
    return DynamicBatching(
        max_queue_delay_microseconds=db.max_queue_delay_microseconds,
        preferred_batch_size=tuple(sorted(set(db.preferred_batch_size))),
        default_timeout_microseconds=policy.default_timeout_microseconds,
        max_queue_size=policy.max_queue_size,
    )


def _boolean_parameter(config: mc.ModelConfig, key: str, default: bool, fail: _Fail) -> bool:
    """A ``parameters`` entry spelled "true" or "false" (any case, spaces around ignored)."""
    if key not in config.parameters:
        return default
    text = config.parameters[key].string_value
    value = _BOOLEAN_VALUES.get(text.strip().lower())
    if value is None:
        raise fail(f'parameters["{key}"] must be "true" or "false", got {text!r}')
    return value


def _instance_count(config: mc.ModelConfig, fail: _Fail) -> int:
    if not config.instance_group:
        return 1
    total = 0
    for group in config.instance_group:
        if group.count < 0:
            raise fail(f"instance_group count must be >= 0, got {group.count}")
        total += group.count or 1
    return total


def _version_policy(config: mc.ModelConfig, fail: _Fail) -> VersionPolicy:
    if not config.HasField("version_policy"):
        return VersionPolicy()
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all", 0, ())
    if which == "specific":
        versions = tuple(sorted(set(policy.specific.versions)))
        if not versions or versions[0] < 0:
            raise fail(f"version_policy specific needs versions >= 0, got {list(versions)}")
        return VersionPolicy("specific", 0, versions)
    num = policy.latest.num_versions if which == "latest" else 1
    if num < 1:
        raise fail("version_policy latest needs num_versions >= 1")
    return VersionPolicy("latest", num, ())
