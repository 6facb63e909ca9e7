"""Test groups.

Our generated stubs and tritonclient's both define the ``inference.*`` protobuf messages, and
protobuf refuses the same symbol from two files in one process. So the suite runs as two pytest
sessions: ``--group unit`` (default: everything that may import ``protos``) and ``--group e2e``
(``tests/integration`` and ``tests/faults``: real processes driven by tritonclient; these must
never import ``protos`` in the test process). ``make test`` runs both.

Tests marked ``gpu`` skip without CUDA, unless ``FABRICSERVE_REQUIRE_GPU=1`` (``make bench-gpu``
sets it): then such a skip is a failure, so a GPU run whose torch cannot use CUDA does not pass
by checking nothing. ``@pytest.mark.gpu(count=2)`` tests may still skip on a host with fewer GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E_DIRS = ("integration", "faults", "conformance")
TESTS_ROOT = Path(__file__).parent
REQUIRE_GPU_ENV = "FABRICSERVE_REQUIRE_GPU"


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    marker = item.get_closest_marker("gpu")
    if not report.skipped or marker is None or os.environ.get(REQUIRE_GPU_ENV) != "1":
        return
    if int(marker.kwargs.get("count", 1)) > 1:
        return  # a multi-GPU test on a host with fewer GPUs
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_GPU_ENV}=1 and this gpu test skipped: {reason}"
