"""CURVE key layout, endpoint checks and per-socket allow-lists, on real ZeroMQ sockets."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from fabric.curve import (
    CurveClient,
    CurveServer,
    InsecureFabric,
    check_endpoints,
    init_keys,
    is_loopback,
    main,
)
from fabric.sockets import make_socket

RECV_TIMEOUT_MS = 1500


def test_init_writes_private_keys_and_allow_lists(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "keys")
    for secret in (keys.broker_secret, keys.frontend_secret, keys.worker_secret):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.root.stat().st_mode) == 0o700
    assert [p.name for p in keys.allowed_frontends.glob("*.key")] == ["frontend.key"]
    assert [p.name for p in keys.allowed_workers.glob("*.key")] == ["worker.key"]
    assert not list(keys.allowed_frontends.glob("*secret*"))


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = init_keys(tmp_path).broker_secret.read_bytes()
    assert init_keys(tmp_path).broker_secret.read_bytes() == first


def test_cli_init(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "broker.key").exists()


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.4.5:1", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("inproc://w", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://10.0.0.2:5555", False),
        ("tcp://broker:5555", False),
        ("tcp://eth0:5555", False),
    ],
)
def test_is_loopback(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local


def test_plain_text_refused_off_loopback() -> None:
    with pytest.raises(InsecureFabric, match=r"tcp://10\.0\.0\.2:5555.*--insecure-fabric"):
        check_endpoints(["tcp://127.0.0.1:1", "tcp://10.0.0.2:5555"], curve=False, insecure=False)
    check_endpoints(["tcp://10.0.0.2:5555"], curve=False, insecure=True)
    check_endpoints(["tcp://10.0.0.2:5555"], curve=True, insecure=False)
    check_endpoints(["tcp://127.0.0.1:5555"], curve=False, insecure=False)


def _exchange(server: zmq.Socket[bytes], client: zmq.Socket[bytes]) -> bytes | None:
    """What the server receives from the client within the timeout (None: nothing).

    Client sockets set ZMQ_IMMEDIATE: a send fails until the CURVE handshake completed, so a
    refused client never gets its message queued at all."""
    deadline = time.monotonic() + RECV_TIMEOUT_MS / 1000
    while True:
        try:
            client.send(b"hello", zmq.NOBLOCK)
            break
        except zmq.Again:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
    if server.poll(RECV_TIMEOUT_MS) == 0:
        return None
    _identity, body = server.recv_multipart()
    return body


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = init_keys(tmp_path / "keys")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    curve = CurveServer.from_keys(keys.root)
    auth = curve.start_authenticator(ctx)
    fe = make_socket(ctx, zmq.ROUTER, security=curve.for_frontends)
    wk = make_socket(ctx, zmq.ROUTER, security=curve.for_workers)
    fe_port = fe.bind_to_random_port("tcp://127.0.0.1")
    wk_port = wk.bind_to_random_port("tcp://127.0.0.1")
    sockets: list[zmq.Socket[bytes]] = []

    def connect(port: int, security: CurveClient | None) -> zmq.Socket[bytes]:
        s = make_socket(ctx, zmq.DEALER, security=security)
        s.connect(f"tcp://127.0.0.1:{port}")
        sockets.append(s)
        return s

    yield keys, fe, wk, fe_port, wk_port, connect
    for s in [*sockets, fe, wk]:
        s.close(0)
    auth.stop()
    ctx.term()


def test_each_socket_admits_only_its_own_keys(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys, fe, wk, fe_port, wk_port, connect = broker
    worker = CurveClient.from_keys(keys.root, "worker")
    frontend = CurveClient.from_keys(keys.root, "frontend")
    assert _exchange(wk, connect(wk_port, worker)) == b"hello"
    assert _exchange(fe, connect(fe_port, frontend)) == b"hello"
    # a frontend key cannot announce models; a worker key cannot submit calls
    assert _exchange(wk, connect(wk_port, frontend)) is None
    assert _exchange(fe, connect(fe_port, worker)) is None


def test_unknown_key_and_plain_text_get_nothing(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys, _fe, wk, _fe_port, wk_port, connect = broker
    _pub, stranger_secret = zmq.auth.create_certificates(str(tmp_path), "stranger")
    stranger = CurveClient.load(str(keys.broker_public), stranger_secret)
    assert _exchange(wk, connect(wk_port, stranger)) is None
    assert _exchange(wk, connect(wk_port, None)) is None


def test_empty_allow_list_admits_nobody(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "keys")
    for p in keys.allowed_workers.glob("*.key"):
        p.unlink()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    curve = CurveServer.from_keys(keys.root)
    auth = curve.start_authenticator(ctx)
    wk = make_socket(ctx, zmq.ROUTER, security=curve.for_workers)
    port = wk.bind_to_random_port("tcp://127.0.0.1")
    client = make_socket(ctx, zmq.DEALER, security=CurveClient.from_keys(keys.root, "worker"))
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        assert _exchange(wk, client) is None
    finally:
        client.close(0)
        wk.close(0)
        auth.stop()
        ctx.term()
