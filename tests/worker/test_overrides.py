"""RepositoryModelLoad's config override and file uploads: parsing, path checks, staging, and the
model table loading, listing and refusing them."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from fabric import errors
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb
from worker.models import ModelTable
from worker.overrides import LoadOverride, check_file_path, parse_load_request, stage

from .test_runtime import RAGGED_MODEL, Replies, write_model

CONFIG = {
    "max_batch_size": 8,
    "input": [{"name": "X", "data_type": "TYPE_INT64", "dims": [-1]}],
    "output": [
        {"name": "Y", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "S", "data_type": "TYPE_INT64", "dims": [1]},
    ],
}


def load_request(model: str, config: dict[str, object] | None, **files: bytes) -> bytes:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        request.parameters["config"].string_param = json.dumps(config)
    for path, data in files.items():
        request.parameters[f"file:{path.replace('__', '/')}"].bytes_param = data
    return request.SerializeToString()


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../x", "1/../../x", "a//b", ".hidden", "a\\b", "a\0b", "a/b/c/d/e", ""],
)
def test_hostile_paths_are_refused(path: str) -> None:
    with pytest.raises(RequestError) as info:
        check_file_path(path)
    assert info.value.code == errors.INVALID_ARGUMENT
    assert "invalid file path" in info.value.message


def test_plain_relative_paths_are_accepted() -> None:
    assert check_file_path("1/model.py") == PurePosixPath("1/model.py")


def test_files_need_a_config_override() -> None:
    with pytest.raises(RequestError, match="the model config must be provided"):
        parse_load_request(load_request("m", None, **{"1__model.py": b"x"}), "m")


def test_bad_config_json_is_refused_with_the_model_named() -> None:
    request = pb.RepositoryModelLoadRequest(model_name="m")
    request.parameters["config"].string_param = "{not json"
    with pytest.raises(RequestError, match="failed to load 'm', failed to parse the config"):
        parse_load_request(request.SerializeToString(), "m")


def test_no_parameters_means_no_override() -> None:
    assert parse_load_request(load_request("m", None), "m") is None


def test_stage_writes_only_under_the_models_staging_directory(tmp_path: Path) -> None:
    override = LoadOverride("", {PurePosixPath("1/model.py"): b"code"})
    target = stage(tmp_path / "staging", "m", override)
    assert target == tmp_path / "staging" / "m"
    assert (target / "1" / "model.py").read_bytes() == b"code"
    stage(tmp_path / "staging", "m", LoadOverride("", {}))  # a new load starts afresh
    assert not (target / "1").exists()
    with pytest.raises(RequestError):
        stage(tmp_path / "staging", "..", override)


def make_table(repo: Path, staging: Path | None, allow: bool) -> ModelTable:
    return ModelTable(
        repo, "cpu", Replies(), min_credit=4, staging_root=staging, allow_file_uploads=allow
    )


def test_uploaded_model_loads_from_staging_and_is_listed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    table = make_table(repo, tmp_path / "staging", allow=True)
    try:
        override = parse_load_request(
            load_request("up", CONFIG, **{"1__model.py": RAGGED_MODEL.encode()}), "up"
        )
        assert override is not None
        assert table.load_override("up", override) == ["1"]
        out = table.served[("up", "1")].model.execute({"X": np.ones((1, 2), np.int64)})
        assert out["S"].tolist() == [[2]]
        assert not (repo / "up").exists()  # nothing written into the repository
        table.unload("up")
        assert [(m.name, m.version, m.state, m.reason) for m in table.index().models] == [
            ("up", "1", "UNAVAILABLE", "unloaded")
        ]
    finally:
        table.stop_all()


def test_uploads_are_refused_unless_turned_on(tmp_path: Path) -> None:
    table = make_table(tmp_path, None, allow=False)
    override = LoadOverride("", {PurePosixPath("1/model.py"): b""})
    with pytest.raises(RequestError) as info:
        table.load_override("up", override)
    assert info.value.code == errors.FAILED_PRECONDITION


def test_config_override_replaces_the_config_for_this_load(tmp_path: Path) -> None:
    write_model(tmp_path, "r", "ragged")
    table = make_table(tmp_path, None, allow=False)
    try:
        table.load("r")
        assert table.served[("r", "1")].model.spec.max_batch_size == 8
        override = parse_load_request(load_request("r", {**CONFIG, "max_batch_size": 2}), "r")
        assert override is not None
        table.load_override("r", override)
        assert table.served[("r", "1")].model.spec.max_batch_size == 2
        assert "max_batch_size: 8" in (tmp_path / "r" / "config.pbtxt").read_text()
    finally:
        table.stop_all()


def test_index_lists_failed_and_never_loaded_models(tmp_path: Path) -> None:
    write_model(tmp_path, "ok", "ragged")
    write_model(tmp_path, "idle", "ragged")
    broken = write_model(tmp_path, "broken", "ragged")
    (broken / "config.pbtxt").write_text("max_batch_size: [")
    table = make_table(tmp_path, None, allow=False)
    try:
        table.load("ok")
        with pytest.raises(RequestError):
            table.load("broken")
        got = {(m.name, m.version, m.state) for m in table.index().models}
        assert got == {("ok", "1", "READY"), ("broken", "", "UNAVAILABLE"), ("idle", "", "")}
        reason = next(m.reason for m in table.index().models if m.name == "broken")
        assert "cannot parse" in reason
    finally:
        table.stop_all()
