"""Scanning a Triton-layout repository: which models are found and which versions are served."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.repository import scan_model, scan_repository

IO = """
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def make_model(root: Path, name: str, versions: list[str], extra_config: str = "") -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(extra_config + IO)
    for version in versions:
        (model_dir / version).mkdir()
    return model_dir


def test_scan_finds_models_sorted_with_default_latest_policy(tmp_path: Path) -> None:
    make_model(tmp_path, "b", ["1", "2", "10"])
    make_model(tmp_path, "a", ["3"])
    sources = scan_repository(tmp_path)
    assert [s.name for s in sources] == ["a", "b"]
    b = sources[1]
    assert b.available_versions == (1, 2, 10)
    assert b.versions == (10,)
    assert b.path == tmp_path / "b"
    assert b.version_path(10) == tmp_path / "b" / "10"
    assert b.version_path("2") == tmp_path / "b" / "2"
    assert b.spec.name == "b"


def test_only_canonical_integer_directories_are_versions(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "m", ["1", "01", "x", "2a", "-3"])
    (model_dir / "7").write_text("a file, not a version directory")
    assert scan_model(model_dir).available_versions == (1,)


def test_directories_without_config_and_stray_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "not_a_model" / "1").mkdir(parents=True)
    (tmp_path / "README.md").write_text("hello")
    make_model(tmp_path, "m", ["1"])
    assert [s.name for s in scan_repository(tmp_path)] == ["m"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", (4,)),
        ("version_policy { latest { num_versions: 2 } }", (3, 4)),
        ("version_policy { latest { num_versions: 9 } }", (1, 3, 4)),
        ("version_policy { all { } }", (1, 3, 4)),
        ("version_policy { specific { versions: [ 1, 3 ] } }", (1, 3)),
    ],
)
def test_version_policy(tmp_path: Path, policy: str, expected: tuple[int, ...]) -> None:
    make_model(tmp_path, "m", ["1", "3", "4"], policy + "\n")
    (source,) = scan_repository(tmp_path)
    assert source.versions == expected
    assert source.available_versions == (1, 3, 4)


def test_specific_versions_that_are_absent_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_model(tmp_path, "m", ["1"], "version_policy { specific { versions: [ 1, 5 ] } }\n")
    with caplog.at_level(logging.WARNING, logger="worker.repository"):
        (source,) = scan_repository(tmp_path)
    assert source.versions == (1,)
    assert "[5]" in caplog.text


def test_model_without_versions_is_listed_with_none_to_serve(tmp_path: Path) -> None:
    make_model(tmp_path, "m", [])
    (source,) = scan_repository(tmp_path)
    assert source.versions == ()


def test_broken_config_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_model(tmp_path, "good", ["1"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.pbtxt").write_text("max_batch_size: oops")
    errors: dict[str, str] = {}
    with caplog.at_level(logging.ERROR, logger="worker.repository"):
        sources = scan_repository(tmp_path, errors=errors)
    assert [s.name for s in sources] == ["good"]
    assert list(errors) == ["bad"]
    assert "cannot parse" in errors["bad"]
    assert str(bad / "config.pbtxt") in errors["bad"]
    assert "skipping model bad" in caplog.text


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_repository(tmp_path / "nowhere")
