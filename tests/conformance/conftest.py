"""Fixtures of the Triton conformance suite: one stack of real processes for the module.

* ``triton_stack`` (session, one for the whole suite to keep it short; tests that unload or
  override a model put it back): broker, one worker (file uploads turned on) and two frontends:
  ``frontends[0]`` in ``explicit`` model control mode (as ``make run``), ``frontends[1]`` in the
  default ``none`` mode with the model-repository and statistics protocols restricted to the
  header ``triton-grpc-protocol-admin-key: s3cret``. The repository is a fresh copy of the demo
  repository, because these tests unload, load and upload models.

When a test fails, the last lines of the stack's logs are appended to its report.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack, build_demo_repo

ADMIN_HEADER = "triton-grpc-protocol-admin-key"
ADMIN_KEY = "s3cret"
MODELS = ("simple", "simple_int8", "simple_string", "simple_identity", "simple_classifier")

_STACKS = pytest.StashKey[list[Stack]]()


@pytest.fixture(scope="session")
def conformance_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conformance_repo")
    build_demo_repo(out)
    return out


@pytest.fixture(scope="session")
def triton_stack(
    conformance_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("conformance")
    repo = root / "models"
    shutil.copytree(conformance_repo, repo)
    stack = Stack(log_dir=root / "logs", model_repository=repo, name="conformance")
    try:
        stack.start_broker()
        stack.start_worker(extra_args=["--allow-model-file-uploads"])
        stack.start_frontend()
        stack.start_frontend(
            extra_args=[
                "--model-control-mode", "none",
                "--grpc-restricted-protocol", f"model-repository,statistics:admin-key={ADMIN_KEY}",
            ]
        )  # fmt: skip
        for frontend in stack.frontends:
            stack.wait_live(frontend)
        stack.wait_ready(MODELS)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def _remember_stack(request: pytest.FixtureRequest) -> None:
    if "triton_stack" in request.fixturenames:
        request.node.stash[_STACKS] = [request.getfixturevalue("triton_stack")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for stack in item.stash.get(_STACKS, []):
            report.sections.append((f"logs of stack {stack.name}", stack.tail_logs()))
    return report
