"""The worker's I/O loop against a broker played by a bare ROUTER socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import zmq

from fabric.protocol import PROTOCOL_TAG, TYPE_FRAME, HeartbeatHeader, MsgType, encode_header
from worker.config import WorkerConfig
from worker.server import WorkerServer

from .test_runtime import batching, wait_until, write_model


def test_a_paused_worker_that_hears_its_broker_keeps_its_connection(tmp_path: Path) -> None:
    """After SIGSTOP/SIGCONT the loop finds the broker silent for longer than the TTL and
    schedules a reconnect; hearing the broker before it fires must call it off. Reconnecting
    closes the socket with whatever the broker had just leased to this worker again."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    write_model(tmp_path, "one", "mlp", batching())
    config = WorkerConfig(
        brokers=(f"tcp://127.0.0.1:{port}",),
        model_repository=str(tmp_path),
        heartbeat_interval_s=0.05,
        heartbeat_liveness=3,
    )
    server = WorkerServer(config)
    server.load_repository()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert router.poll(5000), "the worker never announced itself"
        identity = router.recv_multipart()[0]
        link = server.links[0]
        wait_until(lambda: link.socket is not None)
        sock = link.socket
        beat = [
            identity,
            PROTOCOL_TAG,
            TYPE_FRAME[MsgType.HEARTBEAT],
            encode_header(HeartbeatHeader()),
        ]
        link.backoff.next_delay_s = lambda: 0.5  # type: ignore[method-assign]
        link.last_heard = time.monotonic() - 10  # as if the process had been paused
        wait_until(lambda: link.reconnect_at > 0)  # the loop saw the silence
        until = time.monotonic() + 1.0  # past the reconnect it scheduled
        while time.monotonic() < until:
            router.send_multipart(beat)
            time.sleep(0.01)
            while router.poll(0):
                router.recv_multipart()
        assert link.socket is sock, "reconnected although the broker was talking"
        assert not link.reconnect_at
    finally:
        server.request_stop()
        thread.join(10)
        ctx.destroy(linger=0)
