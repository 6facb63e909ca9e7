"""Our protos import each other as Triton's do (``import "model_config.proto"``), so a client in
any language compiles them with ``-I protos`` and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from grpc_tools import protoc

from protos import generate


def test_protos_compile_with_protos_dir_as_the_only_include_path(tmp_path: Path) -> None:
    args = [
        "grpc_tools.protoc",
        f"-I{generate.REPO_ROOT / generate.PROTO_INCLUDE}",
        f"--python_out={tmp_path}",
        f"--descriptor_set_out={tmp_path / 'set.pb'}",
        *(str(generate.REPO_ROOT / p) for p in generate.PROTO_FILES),
    ]
    assert protoc.main(args) == 0
    assert (tmp_path / "grpc_service_pb2.py").read_text().count("import model_config_pb2") == 1


def test_grpc_service_imports_model_config_by_its_bare_name() -> None:
    text = (generate.PROTOS_DIR / "grpc_service.proto").read_text()
    assert re.findall(r'^import "([^"]+)";', text, re.MULTILINE) == ["model_config.proto"]


def test_generated_stubs_import_their_siblings_from_the_package() -> None:
    # protoc writes ``import model_config_pb2``; the committed stubs must not, or
    # ``python -m frontend`` would need protos/ on sys.path.
    for name in generate.generated_names():
        text = (generate.PROTOS_DIR / name).read_text()
        assert not re.search(r"^import \w+_pb2", text, re.MULTILINE), name


def test_package_imports_rewrites_only_sibling_stub_imports() -> None:
    source = b"import grpc\nimport warnings\nimport model_config_pb2 as model__config__pb2\n"
    assert generate._package_imports(source) == (
        b"import grpc\nimport warnings\nfrom protos import model_config_pb2 as model__config__pb2\n"
    )
