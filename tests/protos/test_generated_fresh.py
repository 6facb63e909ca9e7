"""The committed stubs in protos/ must be byte-identical to what the generator produces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protos import generate


def test_committed_stubs_match_fresh_generation() -> None:
    stale = generate.stale_files()
    assert stale == [], (
        f"stale generated stubs in protos/: {', '.join(stale)}; "
        "run `python -m protos.generate` and commit the result"
    )


def test_check_reports_edited_and_missing_stubs(tmp_path: Path) -> None:
    # A copy of the committed stubs with one byte changed and one file missing must be caught.
    names = generate.generated_names()
    for name in names:
        shutil.copy(generate.PROTOS_DIR / name, tmp_path / name)
    edited = tmp_path / "grpc_service_pb2.py"
    edited.write_bytes(edited.read_bytes() + b"\n")
    (tmp_path / "model_config_pb2.pyi").unlink()

    assert generate.stale_files(tmp_path) == ["grpc_service_pb2.py", "model_config_pb2.pyi"]


def test_generator_covers_every_proto_and_output_kind() -> None:
    protos = sorted(p.name for p in generate.PROTOS_DIR.glob("*.proto"))
    assert sorted(Path(p).name for p in generate.PROTO_FILES) == protos
    assert generate.generated_names() == sorted(
        f"{Path(p).stem}{suffix}"
        for p in protos
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
    )


def test_check_cli_exits_zero_on_fresh_stubs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protos.generate", "--check"],
        cwd=generate.REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_check_cli_exits_one_naming_stale_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(generate, "PROTOS_DIR", tmp_path)  # empty: every stub is "stale"
    assert generate.main(["--check"]) == 1
    err = capsys.readouterr().err
    for name in generate.generated_names():
        assert name in err
    assert "python -m protos.generate" in err
