"""The test harness itself: a frontend whose free port was taken before it bound is started
again on another port instead of failing the test."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.integration import stack as stack_module
from tests.integration.stack import Stack


def test_frontend_restarts_when_its_port_was_taken(
    make_stack: Callable[[], Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = stack_module.free_port
    ports = iter([taken])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        stack = make_stack()
        stack.start_broker()
        fe = stack.start_frontend()
        assert fe.port == taken
        stack.wait_live()
        assert fe.port != taken and fe.alive()
        assert "port taken; restarting" in fe.log_text()
    finally:
        squatter.close()
