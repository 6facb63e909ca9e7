"""Fixtures of the fault scenarios: model repositories, stacks of real processes, chaos records.

* ``fault_repo`` (session): ``simple`` and ``simple_string`` from ``python -m worker.demo_models``
  plus the misbehaving test models of ``tests/faults/models.py``.
* ``make_stack``: ``FaultStack`` objects owned by one test (those that kill, stop or restart
  processes), stopped after it.
* ``shared_stack``: one broker, one worker and one frontend limited to
  ``SMALL_MAX_MESSAGE_BYTES``, shared by the scenarios that only send requests (with a longer
  heartbeat liveness); rebuilt when a test left one of its processes dead.
* ``chaos``: records a scenario's calls for the report written to ``$CHAOS_REPORT`` (JSON).

When a test fails, the last log lines of every stack it used are appended to its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import RECORDS, Call, FaultStack, Record, summarize
from tests.faults.models import build_fault_repo
from tests.integration.stack import (
    PYTHON,
    REPO_ROOT,
    SMALL_MAX_MESSAGE_BYTES,
    owned_stacks,
)

SHARED_MODELS = (
    "work",
    "slow_deadline",
    "slow_cancel",
    "simple",
    "simple_string",
    "faulty",
    "varlen",
    "echo_bytes",
)
SHARED_LIVENESS = 15
"""The shared stack's scenarios detect no dead peer: 3 s of silence before one counts as dead,
so that a hiccup of a busy machine does not fail them."""
STACKS_KEY = pytest.StashKey[list[FaultStack]]()
OUTCOMES: dict[str, str] = {}
SESSION_START = time.monotonic()


@pytest.fixture(scope="session")
def fault_demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fault_demo_repo")
    result = subprocess.run(
        [PYTHON, "-m", "worker.demo_models", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"demo_models failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="session")
def fault_repo(fault_demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fault_repo(tmp_path_factory.mktemp("fault_repo") / "models", fault_demo_repo)


def _register(request: pytest.FixtureRequest, stack: FaultStack) -> None:
    request.node.stash.setdefault(STACKS_KEY, []).append(stack)


@pytest.fixture
def make_stack(
    fault_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], FaultStack]]:
    yield from owned_stacks(
        lambda i: FaultStack(log_dir=tmp_path, model_repository=fault_repo, name=f"f{i}"),
        lambda stack: _register(request, stack),
    )


class _Shared:
    def __init__(self, log_root: Path, repo: Path) -> None:
        self.log_root = log_root
        self.repo = repo
        self.generation = 0
        self.current: FaultStack | None = None

    def get(self, request: pytest.FixtureRequest) -> FaultStack:
        if self.current is not None and all(p.alive() for p in self.current.procs):
            _register(request, self.current)
            return self.current
        if self.current is not None:
            self.current.stop()
        self.generation += 1
        stack = FaultStack(
            log_dir=self.log_root / f"gen{self.generation}",
            model_repository=self.repo,
            name="shared",
            liveness=SHARED_LIVENESS,
        )
        _register(request, stack)
        self.current = stack
        stack.start_broker()
        stack.start_worker()
        stack.start_frontend(max_message_bytes=SMALL_MAX_MESSAGE_BYTES)
        stack.wait_live()
        stack.wait_ready(SHARED_MODELS)
        return stack

    def close(self) -> None:
        if self.current is not None:
            self.current.stop(grace_s=2.0)
            self.current = None


@pytest.fixture(scope="session")
def _shared(fault_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Shared]:
    shared = _Shared(tmp_path_factory.mktemp("fault_shared"), fault_repo)
    yield shared
    shared.close()


@pytest.fixture
def shared_stack(_shared: _Shared, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    """Broker, one worker serving ``fault_repo``, one frontend with
    ``--max-message-bytes SMALL_MAX_MESSAGE_BYTES``. Tests must leave it running."""
    stack = _shared.get(request)
    yield stack
    stack.assert_alive()


class Chaos:
    """Records of one test's scenarios."""

    def __init__(self, test: str) -> None:
        self.test = test

    def record(self, scenario: str, calls: Iterable[Call], notes: str = "") -> Record:
        rec = summarize(scenario, calls, self.test, notes)
        RECORDS.append(rec)
        return rec


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Chaos:
    return Chaos(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed or hasattr(report, "wasxfail"):
        for stack in item.stash.get(STACKS_KEY, []):
            report.sections.append((f"logs of stack {stack.name}", stack.tail_logs()))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            OUTCOMES[report.nodeid] = "xfailed" if report.skipped else "xpassed"
        else:
            OUTCOMES[report.nodeid] = report.outcome
    elif report.failed:
        OUTCOMES[report.nodeid] = f"error in {report.when}"
    elif report.skipped:
        OUTCOMES.setdefault(report.nodeid, "skipped")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("CHAOS_REPORT")
    if not path or not (RECORDS or OUTCOMES):
        return
    report = {
        "duration_s": round(time.monotonic() - SESSION_START, 1),
        "exitstatus": int(exitstatus),
        "records": [r.as_dict() for r in RECORDS],
        "outcomes": OUTCOMES,
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
