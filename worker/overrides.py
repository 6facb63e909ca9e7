"""RepositoryModelLoad's parameters, as Triton's explicit model control takes them:

- ``config``: a JSON ``ModelConfig`` that replaces the model's ``config.pbtxt`` for this load
  (nothing is written to the repository);
- ``file:<path>``: the bytes of a model file, ``<path>`` relative to the model directory (e.g.
  ``file:1/model.py``). With files, the model directory is a fresh per-model staging directory
  holding exactly them (Triton also requires the config override then). Files can carry a
  ``model.py`` the worker will execute, so they are refused unless the operator turned them on.

Every path component is checked (no absolute paths, ``..``, separators other than ``/``, NUL,
hidden names, more than ``MAX_FILE_DEPTH`` levels) and nothing is written outside
``<staging root>/<model>/``. Sizes are bounded per file and in total. The texts of these
refusals are ours: Triton's do not name which rule a path broke.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from google.protobuf import json_format, text_format

from fabric import errors, names
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

FILE_PREFIX = "file:"
MAX_FILES = 64
MAX_FILE_DEPTH = 4
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_CONFIG_CHARS = 1024 * 1024


@dataclass(frozen=True)
class LoadOverride:
    """What a load request brings: a config (pbtxt text) and the files, by relative path."""

    config_text: str | None
    files: dict[PurePosixPath, bytes]


def parse_load_request(body: bytes, model: str) -> LoadOverride | None:
    """The override in a serialized RepositoryModelLoadRequest; None when it has none."""
    request = pb.RepositoryModelLoadRequest.FromString(body)
    config_text: str | None = None
    files: dict[PurePosixPath, bytes] = {}
    total = 0
    for key, param in request.parameters.items():
        if key == "config":
            config_text = _config_text(param.string_param, model)
        elif key.startswith(FILE_PREFIX):
            path = check_file_path(key[len(FILE_PREFIX) :])
            data = param.bytes_param
            if len(data) > MAX_FILE_BYTES:
                raise _invalid(f"file '{path}' is over {MAX_FILE_BYTES >> 20} MiB")
            total += len(data)
            files[path] = data
        else:
            raise _invalid(f"unexpected parameter {names.quote(key)} in model load request")
    if len(files) > MAX_FILES:
        raise _invalid(f"more than {MAX_FILES} files in one load request")
    if total > MAX_TOTAL_BYTES:
        raise _invalid(f"files total over {MAX_TOTAL_BYTES >> 20} MiB")
    if files and config_text is None:
        raise _invalid(
            f"failed to load '{model}', the model config must be provided (parameter "
            "'config') when model files are provided"
        )
    if config_text is None and not files:
        return None
    return LoadOverride(config_text, files)


def check_file_path(raw: str) -> PurePosixPath:
    """``raw`` as a path inside the model directory; RequestError when it could leave it."""
    problem = _path_problem(raw)
    if problem is not None:
        raise _invalid(f"invalid file path {names.quote(raw)} in model load request: {problem}")
    return PurePosixPath(raw)


def stage(staging_root: Path, model: str, override: LoadOverride) -> Path:
    """Write the override's files into a fresh ``<staging_root>/<model>/`` and return it."""
    if not names.valid_model_name(model) or model.startswith("."):
        raise _invalid(f"invalid model name {names.quote(model)}")
    target = staging_root / model
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    root = target.resolve()
    for rel, data in override.files.items():
        path = (target / rel).resolve()
        if root not in path.parents:  # defence in depth: _path_problem already refused these
            raise _invalid(f"file path '{rel}' leaves the model directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def _path_problem(raw: str) -> str | None:
    if not raw:
        return "empty"
    if "\\" in raw or "\0" in raw:
        return "backslash or NUL"
    if raw.startswith("/"):
        return "absolute"
    parts = raw.split("/")
    if len(parts) > MAX_FILE_DEPTH:
        return f"more than {MAX_FILE_DEPTH} levels"
    for part in parts:
        if part in ("", ".", ".."):
            return "empty, '.' or '..' component"
        if part.startswith("."):
            return "hidden name"
        if names.name_problem(part) is not None:
            return f"component {names.quote(part)}: {names.name_problem(part)}"
    if parts == ["config.pbtxt"]:
        return "the config comes from the 'config' parameter"
    return None


def _config_text(json_text: str, model: str) -> str:
    if len(json_text) > MAX_CONFIG_CHARS:
        raise _invalid("config override over 1 MiB")
    config = mc.ModelConfig()
    try:
        json_format.Parse(json_text, config)
    except json_format.ParseError as exc:
        raise _invalid(
            f"failed to load '{model}', failed to parse the config override: {exc}"
        ) from None
    return text_format.MessageToString(config)


def _invalid(message: str) -> RequestError:
    return RequestError(errors.INVALID_ARGUMENT, message)
