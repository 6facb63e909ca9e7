"""Regenerate (or verify) the Python stubs for the protos in this package.

Usage, from the repository root::

    python -m protos.generate           # rewrite protos/*_pb2.py, *_pb2_grpc.py, *.pyi
    python -m protos.generate --check   # exit 1 if any committed stub is stale

protoc runs with ``protos/`` as its only include path, as Triton's build does (the protos import
each other as ``import "model_config.proto"``), so any client can compile them with ``-I protos``.
protoc then writes ``import model_config_pb2``; ``_package_imports`` rewrites that to
``from protos import model_config_pb2`` so that the stubs import as the ``protos`` package.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
PROTO_INCLUDE = "protos"  # the one include path, as Triton builds these files
PROTO_FILES = ("protos/grpc_service.proto", "protos/model_config.proto")
# protoc's sibling import of another generated module, in .py, _grpc.py and .pyi files alike.
_SIBLING_IMPORT = re.compile(rb"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generated_names() -> list[str]:
    """File names (inside protos/) that generation produces, in a stable order."""
    names = []
    for proto in PROTO_FILES:
        stem = Path(proto).stem
        names += [f"{stem}_pb2.py", f"{stem}_pb2_grpc.py", f"{stem}_pb2.pyi"]
    return sorted(names)


def generate(out_root: Path) -> list[Path]:
    """Run protoc, writing stubs under ``out_root/protos/``; return the files written."""
    from grpc_tools import protoc  # imported lazily: only a dev/test dependency

    include = Path(protoc.__file__).resolve().parent / "_proto"  # well-known types
    out_dir = out_root / "protos"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT / PROTO_INCLUDE}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(REPO_ROOT / p) for p in PROTO_FILES),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc}: {' '.join(args)}")
    written = [out_dir / name for name in generated_names()]
    missing = [str(p) for p in written if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not produce: {', '.join(missing)}")
    for path in written:
        path.write_bytes(_package_imports(path.read_bytes()))
    return written


def _package_imports(source: bytes) -> bytes:
    """``import x_pb2 as y`` (protoc's import of a sibling generated module) as
    ``from protos import x_pb2 as y``: the stubs live in the ``protos`` package."""
    return _SIBLING_IMPORT.sub(rb"from protos import \1 as \2", source)


def stale_files(committed_dir: Path | None = None) -> list[str]:
    """Generate into a temp dir; return the names of stubs in ``committed_dir`` (default:
    this package) that differ from the fresh ones or are missing."""
    committed_dir = PROTOS_DIR if committed_dir is None else committed_dir
    with tempfile.TemporaryDirectory(prefix="protos-check-") as tmp:
        fresh_files = generate(Path(tmp))
        stale = []
        for fresh in fresh_files:
            committed = committed_dir / fresh.name
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(fresh.name)
        return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if committed stubs differ",
    )
    args = parser.parse_args(argv)

    if args.check:
        stale = stale_files()
        if stale:
            print(
                "stale generated stubs in protos/: "
                + ", ".join(stale)
                + "\nrun `python -m protos.generate` and commit the result",
                file=sys.stderr,
            )
            return 1
        print("protos: generated stubs are up to date")
        return 0

    for path in generate(REPO_ROOT):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
