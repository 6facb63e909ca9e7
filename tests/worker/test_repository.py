"""Scanning a Triton-layout repository: which models are found and which versions are served."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.repository import scan_model

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


def test_scan_reads_a_model_with_default_latest_policy(tmp_path: Path) -> None:
    b = scan_model(make_model(tmp_path, "b", ["1", "2", "10"]))
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
    source = scan_model(make_model(tmp_path, "m", ["1", "3", "4"], policy + "\n"))
    assert source.versions == expected
    assert source.available_versions == (1, 3, 4)


def test_specific_versions_that_are_absent_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = make_model(
        tmp_path, "m", ["1"], "version_policy { specific { versions: [ 1, 5 ] } }\n"
    )
    with caplog.at_level(logging.WARNING, logger="worker.repository"):
        source = scan_model(model_dir)
    assert source.versions == (1,)
    assert "[5]" in caplog.text


def test_model_without_versions_is_listed_with_none_to_serve(tmp_path: Path) -> None:
    source = scan_model(make_model(tmp_path, "m", []))
    assert source.versions == ()
