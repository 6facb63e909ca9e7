"""A frontend holds the calls that reach it while no worker is reachable, instead of failing
them UNAVAILABLE ("no broker is reachable", "no worker is connected"): before its first broker
has answered (what a balancer's new replica did in the compose test), after its broker went
silent, until it answers again, and while its broker has no worker. After ``--broker-wait-s``
with none, calls fail fast again.

The broker is reached through a TCP relay the test holds shut: the frontend's connection is
accepted, and nothing passes until the relay opens, as with a broker slow to answer; cutting
the relay drops the connection and holds the next one, as with a broker gone silent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bench.lifecycle import free_port
from tests.integration.helpers import (
    assert_int_outputs,
    expect_error,
    rand_int32,
    simple_expected,
    simple_inputs,
)
from tests.integration.stack import HEARTBEAT_INTERVAL_S, Proc, Stack, wait_for

pytestmark = pytest.mark.timeout(180)
WAIT_S = 4.0


class HeldRelay:
    """Accepts connections at once; relays their bytes to ``target`` only after ``open()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.opened = threading.Event()
        self.closing = threading.Event()
        self.accepted = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def open(self) -> None:
        self.opened.set()

    def cut(self) -> None:
        """Drop every relayed connection; connections made after it are held until ``open``."""
        self.opened.clear()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closing.set()
        self.opened.set()
        for t in list(self._threads):
            t.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted.set()
            t = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, conn: socket.socket) -> None:
        self.opened.wait()
        if self.closing.is_set():
            conn.close()
            return
        upstream = socket.create_connection(self.target)
        self._conns += [conn, upstream]
        pumps = [
            threading.Thread(target=self._pump, args=(a, b), daemon=True)
            for a, b in ((conn, upstream), (upstream, conn))
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        conn.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        while not self.closing.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay_stack(make_stack: Callable[[], Stack]) -> Iterator[tuple[Stack, HeldRelay]]:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["simple"])  # the worker is in the broker's catalog before the test
    host, port = stack.broker_frontend_addr.removeprefix("tcp://").rsplit(":", 1)
    relay = HeldRelay((host, int(port)))
    try:
        yield stack, relay
    finally:
        relay.close()


def _frontend_behind(stack: Stack, relay: HeldRelay, *extra: str) -> Proc:
    port = free_port()
    fe = stack._spawn("frontend", ["-m", "frontend", "--host", "127.0.0.1", "--port", str(port),
                                   "--broker", f"tcp://127.0.0.1:{relay.port}",
                                   "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                                   *extra],
                      port)  # fmt: skip
    stack.wait_live(fe)
    return fe


def test_a_call_before_the_first_broker_answer_waits_for_it(
    relay_stack: tuple[Stack, HeldRelay],
) -> None:
    stack, relay = relay_stack
    fresh = _frontend_behind(stack, relay, "--broker-wait-s", "30")
    client = stack.client(fresh)
    assert relay.accepted.wait(10), "the frontend never connected to its broker"
    assert not client.is_server_ready(client_timeout=2), "ready before any broker answered"
    a, b = rand_int32(np.random.default_rng(1), 1), rand_int32(np.random.default_rng(2), 1)
    with ThreadPoolExecutor(4) as pool:
        calls: list[Future[grpcclient.InferResult]] = [
            pool.submit(client.infer, "simple", simple_inputs(a, b), client_timeout=30)
            for _ in range(4)
        ]
        # Without the gate, every call fails within its retries' backoff (well under 0.5 s).
        time.sleep(1.0)
        assert not any(c.done() for c in calls), [c.exception() for c in calls if c.done()]
        opened_at = time.monotonic()
        relay.open()
        for call in calls:
            assert_int_outputs(call.result(timeout=30), simple_expected(a, b))
    print(f"\n[broker gate] 4 held calls answered {time.monotonic() - opened_at:.2f} s "
          "after the broker was let through")  # fmt: skip
    wait_for(lambda: client.is_server_ready(client_timeout=1), timeout_s=10,
             what="ServerReady once the broker answered", watch=stack.procs)  # fmt: skip


def test_with_no_broker_calls_fail_fast_once_the_broker_wait_is_over(
    relay_stack: tuple[Stack, HeldRelay],
) -> None:
    stack, relay = relay_stack
    started = time.monotonic()
    # The gate's timer starts after `started`: a call it held ends at least WAIT_S after it.
    fresh = _frontend_behind(stack, relay, "--broker-wait-s", str(WAIT_S))
    client = stack.client(fresh)
    a = rand_int32(np.random.default_rng(3), 1)
    err = expect_error("UNAVAILABLE", client.infer, "simple",
                       simple_inputs(a, a), client_timeout=30)  # fmt: skip
    assert "no broker is reachable" in err.message()
    assert time.monotonic() - started >= WAIT_S, "failed before the broker wait was over"
    t0 = time.monotonic()
    expect_error("UNAVAILABLE", client.infer, "simple", simple_inputs(a, a),
                 client_timeout=30)  # fmt: skip
    assert time.monotonic() - t0 < 1.0, "a call after the broker wait still waited"
    stack.assert_alive()


def test_calls_while_the_broker_is_gone_wait_for_it_to_answer_again(
    relay_stack: tuple[Stack, HeldRelay],
) -> None:
    stack, relay = relay_stack
    relay.open()
    fresh = _frontend_behind(stack, relay, "--broker-wait-s", "30")
    client = stack.client(fresh)
    a, b = rand_int32(np.random.default_rng(4), 1), rand_int32(np.random.default_rng(5), 1)
    assert_int_outputs(client.infer("simple", simple_inputs(a, b), client_timeout=30),
                       simple_expected(a, b))  # fmt: skip
    relay.cut()
    # The frontend finds the broker gone (a send that finds no connection, or its liveness).
    wait_for(lambda: "no live broker lists a worker" in fresh.log_text(), timeout_s=15,
             what="the frontend saying it has no worker", watch=stack.procs)  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        calls = [
            pool.submit(client.infer, "simple", simple_inputs(a, b), client_timeout=30)
            for _ in range(4)
        ]
        time.sleep(1.0)
        assert not any(c.done() for c in calls), [c.exception() for c in calls if c.done()]
        relay.open()
        for call in calls:
            assert_int_outputs(call.result(timeout=30), simple_expected(a, b))
    stack.assert_alive()


def test_calls_while_the_broker_has_no_worker_wait_for_one_to_join(
    make_stack: Callable[[], Stack],
) -> None:
    """A broker that answers before any worker joined it (a restarted broker, or a stack
    started in any order): calls wait for a worker instead of failing UNAVAILABLE "no worker
    is connected" at once."""
    stack = make_stack()
    stack.start_broker()
    fe = stack.start_frontend(extra_args=["--broker-wait-s", "60"])  # the worker may be slow
    stack.wait_live(fe)
    client = stack.client(fe)
    a, b = rand_int32(np.random.default_rng(6), 1), rand_int32(np.random.default_rng(7), 1)
    with ThreadPoolExecutor(4) as pool:
        calls = [
            pool.submit(client.infer, "simple", simple_inputs(a, b), client_timeout=60)
            for _ in range(4)
        ]
        time.sleep(1.0)  # without the worker check, all 4 fail at once (and after 2 retries)
        assert not any(c.done() for c in calls), [c.exception() for c in calls if c.done()]
        stack.start_worker()
        for call in calls:
            assert_int_outputs(call.result(timeout=60), simple_expected(a, b))
    stack.assert_alive()
