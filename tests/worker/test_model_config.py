"""config.pbtxt parsing, validation and conversion into ModelSpec; the datatype table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protos import model_config_pb2 as mc
from worker.model_config import (
    CONFIG_TYPE_TO_NAME,
    DATATYPES,
    NAME_TO_CONFIG_TYPE,
    DynamicBatching,
    ModelConfigError,
    TensorSpec,
    VersionPolicy,
    datatype_of_numpy,
    load_model_config,
    model_config_bytes,
    parse_model_config,
)

FULL = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "TEXT" data_type: TYPE_STRING dims: [ -1, 2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP16 dims: [ 16 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 2 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { default_timeout_microseconds: 2000 max_queue_size: 5 }
}
version_policy { latest { num_versions: 2 } }
instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_CPU } ]
"""

MINIMAL_IO = """
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def test_full_config_converts_to_named_dataclasses() -> None:
    spec = parse_model_config(FULL, "m")
    assert spec.name == "m"
    assert spec.config.name == "m"
    assert spec.max_batch_size == 8
    assert spec.batched
    assert spec.inputs == (
        TensorSpec("INPUT0", "INT32", (16,)),
        TensorSpec("TEXT", "BYTES", (-1, 2)),
    )
    assert spec.outputs == (TensorSpec("OUTPUT0", "FP16", (16,)),)
    assert spec.dynamic_batching == DynamicBatching(
        max_queue_delay_microseconds=100,
        preferred_batch_size=(2, 4),
        default_timeout_microseconds=2000,
        max_queue_size=5,
    )
    assert spec.version_policy == VersionPolicy("latest", 2, ())
    assert spec.instance_count == 3
    assert spec.input_by_name["TEXT"].numpy_dtype == np.dtype(object)
    assert spec.output_by_name["OUTPUT0"].byte_size == 2


def test_defaults() -> None:
    spec = parse_model_config(MINIMAL_IO, "m")
    assert spec.max_batch_size == 0
    assert not spec.batched
    assert spec.dynamic_batching is None
    assert spec.version_policy == VersionPolicy("latest", 1, ())
    assert spec.instance_count == 1


def test_load_from_directory_fills_name(tmp_path: Path) -> None:
    model_dir = tmp_path / "resnet"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(MINIMAL_IO)
    spec = load_model_config(model_dir)
    assert spec.name == "resnet"
    announced = mc.ModelConfig.FromString(model_config_bytes(spec))
    assert announced.name == "resnet"
    assert announced.input[0].name == "X"
    assert model_config_bytes(spec) == model_config_bytes(load_model_config(model_dir))


def test_spec_is_hashable_and_comparable() -> None:
    assert parse_model_config(FULL, "m") == parse_model_config(FULL, "m")
    assert hash(parse_model_config(FULL, "m")) == hash(parse_model_config(FULL, "m"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("max_batch_size: 'x'", "cannot parse"),
        ("no_such_field: 1", "cannot parse"),
        ('name: "other"\n' + MINIMAL_IO, "does not match its directory"),
        ("max_batch_size: -1\n" + MINIMAL_IO, "max_batch_size must be >= 0"),
        ('output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]', "no inputs"),
        ('input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]', "no outputs"),
        (
            'input [ { name: "X" dims: [ 1 ] } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input 'X': datatype TYPE_INVALID is not supported",
        ),
        (
            'input [ { name: "X" data_type: TYPE_BF16 dims: [ 1 ] } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input 'X': datatype TYPE_BF16 is not supported",
        ),
        (
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ -2 ] } ]',
            "output 'Y': dims must be >= -1",
        ),
        (
            "input [ { data_type: TYPE_FP32 dims: [ 1 ] } ]"
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "an input has no name",
        ),
        (
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] },'
            ' { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "duplicate input 'X'",
        ),
        (
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input 'X': optional inputs are not supported",
        ),
        (
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]'
            ' output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input 'X': reshape is not supported",
        ),
        ("dynamic_batching { }\n" + MINIMAL_IO, "dynamic_batching needs max_batch_size > 0"),
        (
            "max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 8 ] }\n" + MINIMAL_IO,
            "preferred_batch_size 8 is outside 1..max_batch_size",
        ),
        ("version_policy { specific { } }\n" + MINIMAL_IO, "version_policy specific"),
        (
            "version_policy { latest { num_versions: 0 } }\n" + MINIMAL_IO,
            "num_versions >= 1",
        ),
        ("instance_group [ { count: -1 } ]\n" + MINIMAL_IO, "count must be >= 0"),
        (
            "sequence_batching { state [ { input_name: 'a' output_name: 'b' } ] }\n" + MINIMAL_IO,
            "implicit state is not supported",
        ),
        (
            "sequence_batching { control_input [ { name: 'S' control [ { kind: "
            "CONTROL_SEQUENCE_START } ] } ] }\n" + MINIMAL_IO,
            "control_input 'S': give int32_, fp32_ or bool_false_true",
        ),
        (
            'parameters { key: "dispatch_when_idle" value { string_value: "yes" } }\n' + MINIMAL_IO,
            'parameters["dispatch_when_idle"] must be "true" or "false", got \'yes\'',
        ),
    ],
)
def test_invalid_config_names_file_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_model_config(text, "m", "/repo/m/config.pbtxt")
    assert reason in info.value.reason
    assert info.value.path == "/repo/m/config.pbtxt"
    assert str(info.value).startswith("/repo/m/config.pbtxt: ")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, False), ("true", True), (" TRUE ", True), ("false", False)]
)
def test_dispatch_when_idle_parameter(value: str | None, expected: bool) -> None:
    param = (
        f'parameters {{ key: "dispatch_when_idle" value {{ string_value: "{value}" }} }}\n'
        if value is not None
        else ""
    )
    assert parse_model_config(param + MINIMAL_IO, "m").dispatch_when_idle is expected


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_model_config(tmp_path)


def test_version_policy_selection() -> None:
    present = [3, 1, 10, 2]
    assert VersionPolicy().select(present) == [10]
    assert VersionPolicy("latest", 2).select(present) == [3, 10]
    assert VersionPolicy("latest", 9).select(present) == [1, 2, 3, 10]
    assert VersionPolicy("all").select(present) == [1, 2, 3, 10]
    assert VersionPolicy("specific", 0, (2, 7)).select(present) == [2]
    assert VersionPolicy().select([]) == []


def test_datatype_table_is_consistent() -> None:
    expected = {
        "BOOL": (np.bool_, torch.bool, 1),
        "UINT8": (np.uint8, torch.uint8, 1),
        "UINT16": (np.uint16, torch.uint16, 2),
        "UINT32": (np.uint32, torch.uint32, 4),
        "UINT64": (np.uint64, torch.uint64, 8),
        "INT8": (np.int8, torch.int8, 1),
        "INT16": (np.int16, torch.int16, 2),
        "INT32": (np.int32, torch.int32, 4),
        "INT64": (np.int64, torch.int64, 8),
        "FP16": (np.float16, torch.float16, 2),
        "FP32": (np.float32, torch.float32, 4),
        "FP64": (np.float64, torch.float64, 8),
        "BYTES": (np.object_, None, 0),
    }
    assert set(DATATYPES) == set(expected)
    for name, (np_type, torch_type, size) in expected.items():
        dt = DATATYPES[name]
        assert dt.numpy_dtype == np.dtype(np_type)
        assert dt.torch_dtype == torch_type
        assert dt.byte_size == size
        assert CONFIG_TYPE_TO_NAME[NAME_TO_CONFIG_TYPE[name]] == name
        assert datatype_of_numpy(np.dtype(np_type)) == name
        if torch_type is not None:
            assert torch.from_numpy(np.zeros(1, np_type)).dtype == torch_type
    assert CONFIG_TYPE_TO_NAME[mc.TYPE_STRING] == "BYTES"
    assert CONFIG_TYPE_TO_NAME[mc.TYPE_INT32] == "INT32"
    assert datatype_of_numpy(np.dtype("S3")) == "BYTES"
    assert datatype_of_numpy(np.dtype(np.complex64)) is None
