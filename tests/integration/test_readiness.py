"""ServerReady / ModelReady follow the workers: false without one, true once one serves the
model, false again within seconds after it is SIGKILLed. ServerLive stays true throughout."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.stack import (
    DEMO_MODELS,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    Stack,
    wait_for,
)

NOT_READY_WITHIN_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS + 3.0
"""Declared dead after liveness x interval (1 s here), plus time for the news to reach the
frontend."""


@pytest.mark.timeout(180)
def test_ready_follows_worker(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_broker()
    stack.start_frontend()
    stack.wait_live()
    client = stack.client()

    # Give a wrongly-eager frontend time to claim readiness: the broker has had several
    # heartbeats to tell it that there is no worker.
    for _ in range(3):
        wait_for(
            lambda: client.is_server_live(client_timeout=1.0),
            timeout_s=5.0,
            what="ServerLive",
            watch=stack.procs,
        )
        assert not client.is_server_ready(), "ServerReady without any worker"
        for model in DEMO_MODELS:
            assert not client.is_model_ready(model), f"ModelReady({model}) without any worker"

    worker = stack.start_worker()
    stack.wait_ready(DEMO_MODELS)
    assert client.is_server_live()

    stack.kill(worker)  # SIGKILL: no goodbye, only silence
    wait_for(
        lambda: not client.is_server_ready(client_timeout=1.0),
        timeout_s=NOT_READY_WITHIN_S,
        what="ServerReady false after the only worker was killed",
        watch=[stack.broker, stack.frontend],
    )
    for model in DEMO_MODELS:
        assert not client.is_model_ready(model), f"ModelReady({model}) with its worker dead"
    assert client.is_server_live(), "the frontend is alive even with no worker"
    assert stack.broker.alive() and stack.frontend.alive()


@pytest.mark.timeout(180)
def test_model_ready_per_worker_repository(
    make_stack: Callable[[], Stack], demo_repo: Path, tmp_path: Path
) -> None:
    """A worker that serves only ``simple`` makes ``simple`` ready and not ``mlp``."""
    only_simple = tmp_path / "only_simple"
    only_simple.mkdir()
    shutil.copytree(demo_repo / "simple", only_simple / "simple")

    stack = make_stack()
    stack.start_broker()
    stack.start_frontend()
    stack.start_worker(only_simple)
    stack.wait_ready(["simple"])
    client = stack.client()
    assert client.is_model_ready("simple")
    assert not client.is_model_ready("simple_string")
    assert not client.is_model_ready("mlp")
    index = client.get_model_repository_index()
    assert [m.name for m in index.models] == ["simple"], index
