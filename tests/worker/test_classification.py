"""Top-k classes as Triton formats them (server src/classification.cc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabric.errors import INVALID_ARGUMENT, RequestError
from worker.classification import LabelFileError, check_datatype, classify, read_labels


def test_float_values_have_six_decimals_and_labels_when_known() -> None:
    scores = np.array([0.25, 3.0, -1.5], np.float32)
    assert classify(scores, 5, ("a", "b"), batched=False).tolist() == [
        b"3.000000:1:b",
        b"0.250000:0:a",
        b"-1.500000:2",  # no label for index 2
    ]


def test_integer_values_are_plain_and_rows_are_classified_separately() -> None:
    scores = np.array([[1, 9, 5], [7, 7, 0]], np.int8)
    assert classify(scores, 2, (), batched=True).tolist() == [
        [b"9:1", b"5:2"],
        [b"7:0", b"7:1"],  # ties keep index order
    ]


def test_multi_dim_rows_are_flattened() -> None:
    scores = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    assert classify(scores, 1, (), batched=True).tolist() == [[b"3.000000:3"], [b"7.000000:3"]]


def test_empty_label_is_left_out() -> None:
    assert classify(np.array([1.0]), 1, ("",), batched=False).tolist() == [b"1.000000:0"]


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL", "FP16", "BF16"])
def test_unsupported_datatypes_get_tritons_text(datatype: str) -> None:
    with pytest.raises(RequestError) as info:
        check_datatype(datatype)
    assert info.value.code == INVALID_ARGUMENT
    assert info.value.message == (
        f"class result not available for output due to unsupported type '{datatype}'"
    )


def test_labels_are_read_one_a_line(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nbird\n")
    labels = read_labels(tmp_path, [("OUT", "labels.txt"), ("OTHER", "")])
    assert labels == (("OUT", ("cat", "dog", "", "bird")),)


@pytest.mark.parametrize("filename", ["../labels.txt", "sub/labels.txt", "..", "missing.txt"])
def test_label_files_outside_the_model_directory_or_missing_are_refused(
    tmp_path: Path, filename: str
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.txt").write_text("x\n")
    with pytest.raises(LabelFileError, match="output 'OUT'"):
        read_labels(tmp_path / "sub", [("OUT", filename)])
