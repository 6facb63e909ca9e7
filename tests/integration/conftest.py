"""Fixtures for the end-to-end tests: a model repository and stacks of real processes.

* ``demo_repo`` (session): the demo repository built by ``python -m worker.demo_models``.
* ``model_repo`` (session): a copy of it plus the test models ``faulty`` (raises on negative
  input), ``sleepy`` (sleeps DELAY_MS milliseconds, one instance, no dynamic batching) and
  ``sleepy_pair`` (the same with two instances), ``echo`` (negates a variable-length FP32
  vector, max_batch_size 0).
* ``stack`` : a session-wide stack (broker, one worker, a default frontend and a frontend limited
  to ``SMALL_MAX_MESSAGE_BYTES``) for tests that only send requests. If a test leaves one of its
  processes dead, that test fails at teardown and the next test gets a fresh stack.
* ``make_stack``: a factory for stacks owned by one test (those that kill or restart processes).

When a test fails, the last lines of every log of the stacks it used are appended to its report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.integration.decoupled_models import TRICKLE_CONFIG, TRICKLE_MODEL
from tests.integration.stack import (
    ALL_MODELS,
    DEMO_MODELS,
    SMALL_MAX_MESSAGE_BYTES,
    Stack,
    build_demo_repo,
    owned_stacks,
)

MAX_FAILED_STARTS = 2

STACKS_KEY = pytest.StashKey[list[Stack]]()

FAULTY_CONFIG = """\
name: "faulty"
backend: "python"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 4 ]
  }
]
"""

FAULTY_MODEL = '''\
"""Doubles INPUT0; raises on any negative value, to test how model errors reach clients."""

import numpy as np


class Model:
    def load(self, config, device):
        self.device = device

    def execute(self, inputs):
        x = np.asarray(inputs["INPUT0"])
        if (x < 0).any():
            raise ValueError(f"faulty model refuses negative input {int(x.min())}")
        return {"OUTPUT0": (x * 2).astype(np.int32)}
'''

SLEEPY_CONFIG = """\
name: "sleepy"
backend: "python"
max_batch_size: 8
input [
  {
    name: "DELAY_MS"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }
]
"""

SLEEPY_MODEL = '''\
"""Sleeps for the largest DELAY_MS of the batch, then echoes DELAY_MS."""

import time

import numpy as np


class Model:
    def load(self, config, device):
        self.device = device

    def execute(self, inputs):
        delay_ms = np.asarray(inputs["DELAY_MS"])
        time.sleep(float(delay_ms.max()) / 1000.0)
        return {"OUTPUT0": delay_ms.astype(np.int32)}
'''


ECHO_CONFIG = """\
name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

ECHO_MODEL = '''\
"""Negates a variable-length FP32 vector (no batching): large payloads in both directions."""

import numpy as np


class Model:
    def load(self, config, device):
        pass

    def execute(self, inputs):
        return {"OUTPUT0": np.negative(inputs["INPUT0"]).astype(np.float32)}
'''

SLEEPY_PAIR_CONFIG = SLEEPY_CONFIG.replace('"sleepy"', '"sleepy_pair"') + (
    "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
)


def write_python_model(repo: Path, name: str, config: str, source: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(source)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_repo")
    build_demo_repo(out)
    for model in DEMO_MODELS:
        assert (out / model / "config.pbtxt").is_file(), f"demo repo lacks {model}/config.pbtxt"
    assert (out / "mlp" / "1" / "model.pt").is_file(), "demo repo lacks mlp/1/model.pt"
    return out


@pytest.fixture(scope="session")
def model_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("model_repo") / "models"
    shutil.copytree(demo_repo, repo)
    write_python_model(repo, "faulty", FAULTY_CONFIG, FAULTY_MODEL)
    write_python_model(repo, "sleepy", SLEEPY_CONFIG, SLEEPY_MODEL)
    write_python_model(repo, "sleepy_pair", SLEEPY_PAIR_CONFIG, SLEEPY_MODEL)
    write_python_model(repo, "echo", ECHO_CONFIG, ECHO_MODEL)
    write_python_model(repo, "trickle", TRICKLE_CONFIG, TRICKLE_MODEL)  # decoupled, see there
    return repo


def _register(request: pytest.FixtureRequest, stack: Stack) -> None:
    request.node.stash.setdefault(STACKS_KEY, []).append(stack)


class SharedStack:
    """The session-wide stack, rebuilt when a previous test left one of its processes dead."""

    def __init__(self, log_root: Path, model_repository: Path) -> None:
        self.log_root = log_root
        self.model_repository = model_repository
        self.generation = 0
        self.failed_starts = 0
        self.current: Stack | None = None
        self.last_failed: Stack | None = None

    def get(self) -> Stack:
        if self.current is not None and all(p.alive() for p in self.current.procs):
            return self.current
        if self.current is not None:
            self.current.stop()
        if self.failed_starts >= MAX_FAILED_STARTS:
            pytest.fail(f"the shared stack failed to start {self.failed_starts} times; see above")
        self.generation += 1
        stack = Stack(
            log_dir=self.log_root / f"gen{self.generation}",
            model_repository=self.model_repository,
            name="shared",
        )
        try:
            stack.start_broker()
            stack.start_worker()
            stack.start_frontend()
            stack.start_frontend(max_message_bytes=SMALL_MAX_MESSAGE_BYTES)
            for frontend in stack.frontends:
                stack.wait_live(frontend)
                stack.wait_ready(ALL_MODELS, frontend)
        except BaseException:
            self.failed_starts += 1
            self.last_failed = stack
            stack.stop()
            raise
        self.current = stack
        return stack

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def _shared_stack(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedStack]:
    shared = SharedStack(tmp_path_factory.mktemp("shared_stack"), model_repo)
    yield shared
    shared.close()


@pytest.fixture
def stack(_shared_stack: SharedStack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The shared, read-only stack: broker, one worker, ``frontends[0]`` default and
    ``frontends[1]`` with ``--max-message-bytes SMALL_MAX_MESSAGE_BYTES``."""
    current = _shared_stack.current
    if current is not None:
        _register(request, current)
    try:
        live = _shared_stack.get()
    except BaseException:
        if _shared_stack.last_failed is not None:
            _register(request, _shared_stack.last_failed)
        raise
    if live is not current:
        _register(request, live)
    yield live
    live.assert_alive()


@pytest.fixture
def make_stack(
    model_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Stack]]:
    """Stacks owned by one test, started empty: call ``start_*`` on them."""
    yield from owned_stacks(
        lambda i: Stack(log_dir=tmp_path, model_repository=model_repo, name=f"s{i}"),
        lambda stack: _register(request, stack),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for stack in item.stash.get(STACKS_KEY, []):
            report.sections.append((f"logs of stack {stack.name}", stack.tail_logs()))
    return report
