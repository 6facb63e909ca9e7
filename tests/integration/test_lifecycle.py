"""Graceful shutdown: SIGTERM makes every tier exit promptly with status 0 and say so, whatever
order the tiers are stopped in (``docker compose down`` signals them all at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.integration.helpers import check_simple
from tests.integration.stack import DEMO_MODELS, Proc, Stack

EXIT_WITHIN_S = 10.0


def running_stack(make_stack: Callable[[], Stack]) -> Stack:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(DEMO_MODELS)
    check_simple(stack.client())
    return stack


def assert_clean_exit(proc: Proc, code: int | None) -> None:
    assert code is not None, f"{proc.name} still running {EXIT_WITHIN_S}s after SIGTERM"
    assert code == 0, f"{proc.name} exited with {code} on SIGTERM:\n{proc.tail()}"
    assert "[shutdown]" in proc.log_text(), f"{proc.name} did not log its shutdown"


def wait_exit(proc: Proc, deadline: float) -> int | None:
    try:
        return proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(120)
def test_sigterm_in_order(make_stack: Callable[[], Stack]) -> None:
    """Frontend, then worker, then broker: each exits 0 within the grace period."""
    stack = running_stack(make_stack)
    for proc in [stack.frontend, stack.workers[0], stack.broker]:
        os.kill(proc.pid, signal.SIGTERM)
        assert_clean_exit(proc, wait_exit(proc, time.monotonic() + EXIT_WITHIN_S))


@pytest.mark.timeout(120)
def test_sigterm_all_at_once(make_stack: Callable[[], Stack]) -> None:
    stack = running_stack(make_stack)
    procs = [stack.frontend, stack.workers[0], stack.broker]
    for proc in procs:
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + EXIT_WITHIN_S
    codes = {proc.name: wait_exit(proc, deadline) for proc in procs}
    for proc in procs:
        assert_clean_exit(proc, codes[proc.name])


@pytest.mark.timeout(120)
def test_worker_sigterm_after_broker_died(make_stack: Callable[[], Stack]) -> None:
    """A worker whose broker is gone must still stop within its grace period."""
    stack = running_stack(make_stack)
    stack.kill(stack.broker)  # SIGKILL
    worker = stack.workers[0]
    os.kill(worker.pid, signal.SIGTERM)
    assert_clean_exit(worker, wait_exit(worker, time.monotonic() + EXIT_WITHIN_S))


@pytest.mark.timeout(120)
def test_frontend_sigterm_after_broker_died(make_stack: Callable[[], Stack]) -> None:
    stack = running_stack(make_stack)
    stack.kill(stack.broker)  # SIGKILL
    frontend = stack.frontend
    os.kill(frontend.pid, signal.SIGTERM)
    assert_clean_exit(frontend, wait_exit(frontend, time.monotonic() + EXIT_WITHIN_S))


IDLE_EXIT_WITHIN_S = 3.0


@pytest.mark.timeout(120)
def test_idle_worker_exits_promptly(make_stack: Callable[[], Stack]) -> None:
    """With nothing in flight there is nothing to drain: every model instance, including the
    two instances of ``sleepy_pair``, stops at once."""
    stack = running_stack(make_stack)
    worker = stack.workers[0]
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    code = wait_exit(worker, started + IDLE_EXIT_WITHIN_S)
    assert code is not None, (
        f"idle worker still running {IDLE_EXIT_WITHIN_S}s after SIGTERM:\n{worker.tail(8)}"
    )
    assert_clean_exit(worker, code)
