"""The worker's model table with names straight off the wire: a name is checked before it
becomes a path, and no error text names the repository's location or echoes a long name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric import errors
from fabric.errors import RequestError
from worker.models import ModelTable

from .test_runtime import MLP_CONFIG, Replies, write_model

MAX_MESSAGE_BYTES = 300


@pytest.fixture
def table(tmp_path: Path) -> ModelTable:
    root = tmp_path / "private" / "models"
    root.mkdir(parents=True)
    return ModelTable(root, "cpu", Replies(), min_credit=4)


@pytest.mark.parametrize(
    "name", ["m" * 300, "é" * 200, "x" * (1 << 20), "a\0b", "..", "../models", "a/../../b"]
)
def test_names_that_cannot_be_a_model_directory_are_not_found(table: ModelTable, name: str) -> None:
    with pytest.raises(RequestError) as info:
        table.load(name)
    assert info.value.code == errors.NOT_FOUND
    assert len(info.value.message.encode()) < MAX_MESSAGE_BYTES
    assert "private" not in info.value.message


def test_load_errors_name_files_from_the_model_directory(table: ModelTable) -> None:
    root = table.repository
    (root / "empty" / "1").mkdir(parents=True)
    (root / "empty" / "config.pbtxt").write_text(MLP_CONFIG)
    (root / "badconfig").mkdir()
    (root / "badconfig" / "config.pbtxt").write_text("max_batch_size: many\n")
    write_model(root, "good", "ragged")
    try:
        with pytest.raises(RequestError) as info:
            table.load("empty")
        assert info.value.code == errors.INVALID_ARGUMENT  # Triton's code for a failed load
        assert "empty/1 holds none of model.pt" in info.value.message
        with pytest.raises(RequestError) as info:
            table.load("badconfig")
        assert info.value.code == errors.INVALID_ARGUMENT
        assert info.value.message.startswith("badconfig/config.pbtxt: cannot parse")
        for text in [*table.load_errors.values()]:
            assert str(root) not in text and "private" not in text, text
        assert table.load("good") == ["1"]
        with pytest.raises(RequestError, match="not a number") as info:
            table.load("good", "9" * 100_000)
        assert len(info.value.message.encode()) < MAX_MESSAGE_BYTES
    finally:
        table.stop_all()
