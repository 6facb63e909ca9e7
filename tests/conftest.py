"""Test groups.

Our generated stubs and tritonclient's both define the ``inference.*`` protobuf messages, and
protobuf refuses the same symbol from two files in one process. So the suite runs as two pytest
sessions: ``--group unit`` (default: everything that may import ``protos``) and ``--group e2e``
(``tests/integration`` and ``tests/faults``: real processes driven by tritonclient; these must
never import ``protos`` in the test process). ``make test`` runs both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

E2E_DIRS = ("integration", "faults", "conformance")
TESTS_ROOT = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--group",
        choices=("unit", "e2e"),
        default="unit",
        help="unit: tests that may import our protos; e2e: real processes + tritonclient",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    try:
        rel = collection_path.relative_to(TESTS_ROOT)
    except ValueError:
        return None
    if not rel.parts or rel.parts == ("conftest.py",):
        return None
    in_e2e = rel.parts[0] in E2E_DIRS
    return in_e2e != (config.getoption("--group") == "e2e")
