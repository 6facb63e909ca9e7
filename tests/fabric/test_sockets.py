"""send_frames / recv_frames / readable: send_multipart and recv_multipart semantics through
pyzmq's Cython methods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from fabric.sockets import make_socket, readable, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = make_socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = make_socket(ctx, zmq.DEALER, identity=b"d1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    ctx.destroy(linger=0)


def wait_readable(sock: zmq.Socket[bytes]) -> None:
    assert sock.poll(5000, zmq.POLLIN), "nothing arrived"
    assert readable(sock)


def wait_connected(dealer: zmq.Socket[bytes]) -> None:
    """With IMMEDIATE a DEALER takes messages only once a connection is up."""
    assert dealer.poll(5000, zmq.POLLOUT), "never connected"


def test_frames_arrive_whole_and_in_order(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    big = b"x" * 300_000
    wait_connected(dealer)
    send_frames(dealer, [b"a", memoryview(b"bc"), big], copy=False)
    send_frames(dealer, [b"second"])
    wait_readable(router)
    assert recv_frames(router) == [b"d1", b"a", b"bc", big]
    wait_readable(router)
    assert recv_frames(router) == [b"d1", b"second"]
    assert not readable(router)
    with pytest.raises(zmq.Again):
        recv_frames(router)


def test_unroutable_raises_like_send_multipart(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, _ = pair
    with pytest.raises(zmq.ZMQError) as info:
        send_frames(router, [b"nobody", b"x"])
    assert info.value.errno == zmq.EHOSTUNREACH


def test_a_bad_frame_sends_nothing(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    """Checked before the first frame goes: half a message would prefix the next one."""
    router, dealer = pair
    with pytest.raises(TypeError):
        send_frames(dealer, [b"part", "not bytes"])  # type: ignore[list-item]
    wait_connected(dealer)
    send_frames(dealer, [b"next"])
    wait_readable(router)
    assert recv_frames(router) == [b"d1", b"next"]
