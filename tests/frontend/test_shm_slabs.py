"""The fabric client's side of the shared memory transport (``fabric.shm_transport``): a large
request for a model whose workers share our shared memory goes in a slab and only its name
goes to the broker; the final reply is copied out of the slab, which is then reused; a request
given up on takes its slab with it; a reply with another request's tag is refused. A fake
broker (a ROUTER socket in the test) plays broker and worker; slabs live in a temporary
directory standing in for ``/dev/shm``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import zmq

from fabric import errors, messages, shm_transport
from fabric.messages import Message
from fabric.protocol import CatalogEntry, CatalogHeader, ReplyHeader, RequestHeader
from fabric.shm_transport import MIN_BYTES, SlabMaps, SlabPool
from frontend import fabric_client
from frontend.fabric_client import FabricClient

MODEL = "identity"
LARGE = bytes(range(256)) * (MIN_BYTES // 256 + 1)
MAX_BYTES = 64 << 20
WAIT_S = 5.0


class FakeBroker:
    """The broker's end of the frontend's link, and a worker's mappings of its slabs."""

    def __init__(self, router: zmq.Socket[bytes], shm_dir: Path, domain: str) -> None:
        self.router = router
        self.peer = b""
        self.maps = SlabMaps(domain, shm_dir)
        self._requests: list[tuple[RequestHeader, bytes]] = []

    async def request(self) -> tuple[RequestHeader, bytes]:
        """The next request the frontend sent: its header and its (inline) payload."""
        give_up = time.monotonic() + WAIT_S
        while not self._requests:
            assert time.monotonic() < give_up, "no request from the frontend"
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.005)
                continue
            self.peer = frames[0]
            for msg in messages.iter_messages(frames[1:], routed=False):  # may be several
                if isinstance(msg, Message) and isinstance(msg.header, RequestHeader):
                    payload = bytes(msg.payload[0]) if msg.payload else b""
                    self._requests.append((msg.header, payload))
        return self._requests.pop(0)

    def send(self, frames: list[bytes]) -> None:
        self.router.send_multipart([self.peer, *frames])

    def reply_in_slab(self, header: RequestHeader, body: bytes, tag: int | None = None) -> None:
        """What a worker does: the body into the request's slab, behind ``tag`` (its id)."""
        slab, view = self.maps.map(header.payload_shm, header.payload_size, MAX_BYTES)
        view.release()
        assert SlabMaps.write_reply(
            slab, header.request_id if tag is None else tag, [body], len(body)
        )
        self.send(messages.reply(ReplyHeader(header.request_id, "OK", payload_in_slab=len(body))))


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[FabricClient, FakeBroker], Awaitable[None]],
) -> None:
    """Run ``body`` against a started client whose broker said ``MODEL`` is served in the
    client's shared memory domain."""
    monkeypatch.setattr(
        fabric_client, "domain_if", lambda enabled: shm_transport.domain_if(enabled, tmp_path)
    )
    monkeypatch.setattr(fabric_client, "SlabPool", lambda domain: SlabPool(domain, tmp_path))
    domain = shm_transport.local_domain(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    broker = FakeBroker(router, tmp_path, domain)

    async def main() -> None:
        client = FabricClient(
            [f"tcp://127.0.0.1:{port}"],
            heartbeat_interval_s=1.0,
            heartbeat_liveness=100,  # the fake broker sends no heartbeats
            max_message_bytes=MAX_BYTES,
            shm_transport=True,
        )
        await client.start()
        try:
            give_up = time.monotonic() + WAIT_S
            while not broker.peer:  # the frontend's first heartbeat names its peer id
                assert time.monotonic() < give_up, "no heartbeat from the frontend"
                try:
                    broker.peer = router.recv_multipart(zmq.NOBLOCK)[0]
                except zmq.Again:
                    await asyncio.sleep(0.005)
            entries = [
                CatalogEntry(MODEL, "1", b"", 1, domain),
                CatalogEntry("remote", "1", b"", 1, "0123456789abcdef"),
            ]
            broker.send(messages.catalog(CatalogHeader(1, 1, entries, 0)))
            while MODEL not in client._links[0].shm_models:
                assert time.monotonic() < give_up, "the catalog never reached the client"
                await asyncio.sleep(0.005)
            await body(client, broker)
        finally:
            await client.close()
            broker.maps.close()

    try:
        asyncio.run(main())
    finally:
        router.close(linger=0)
        ctx.term()


@pytest.mark.timeout(30)
def test_a_large_request_goes_in_a_slab_and_its_reply_comes_out_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(client: FabricClient, broker: FakeBroker) -> None:
        _, fut, _ = client.submit(MODEL, "", 0, LARGE)
        header, inline = await broker.request()
        assert inline == b""  # only the name crossed the socket
        assert header.payload_size == len(LARGE)
        assert names(tmp_path) == {header.payload_shm}
        assert (tmp_path / header.payload_shm).read_bytes()[: len(LARGE)] == LARGE
        answer = b"\x5a" * (MIN_BYTES + 4096)  # not the request: the reply half
        broker.reply_in_slab(header, answer)
        reply = await asyncio.wait_for(fut, WAIT_S)
        assert (reply.status, reply.payload) == ("OK", answer)
        assert names(tmp_path) == {header.payload_shm}  # kept for the next request

        _, fut, _ = client.submit(MODEL, "", 0, LARGE[::-1])
        again, _ = await broker.request()
        assert again.payload_shm == header.payload_shm  # the same slab, reused
        assert (tmp_path / again.payload_shm).read_bytes()[: len(LARGE)] == LARGE[::-1]
        broker.send(messages.reply(ReplyHeader(again.request_id, "OK"), [b"small, inline"]))
        reply = await asyncio.wait_for(fut, WAIT_S)
        assert (reply.status, bytes(reply.payload or b"")) == ("OK", b"small, inline")

    run(tmp_path, monkeypatch, body)
    assert names(tmp_path) == set()  # close() removed the idle slab


@pytest.mark.timeout(30)
def test_small_payloads_and_models_elsewhere_go_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: FabricClient, broker: FakeBroker) -> None:
        small = LARGE[: MIN_BYTES - 1]
        for model, payload in ((MODEL, small), ("remote", LARGE), ("unknown", LARGE)):
            _, fut, _ = client.submit(model, "", 0, payload)
            header, inline = await broker.request()
            assert (header.payload_shm, header.payload_size) == ("", 0)
            assert inline == payload
            client.cancel(header.request_id)
            assert fut.cancelled()
        assert names(tmp_path) == set()

    run(tmp_path, monkeypatch, body)  # closed right after a cancel: it is sent, not an error
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.timeout(30)
def test_a_request_given_up_on_takes_its_slab_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(client: FabricClient, broker: FakeBroker) -> None:
        _, fut, _ = client.submit(MODEL, "", 0, LARGE)
        header, _ = await broker.request()
        broker.maps.map(header.payload_shm, header.payload_size, MAX_BYTES)[1].release()
        client.cancel(header.request_id)
        assert fut.cancelled()
        assert names(tmp_path) == set()  # unlinked: no later request can get it
        # The worker still running it writes into its own mapping; nobody reads it.
        broker.reply_in_slab(header, b"late" * (MIN_BYTES // 4))
        _, fut, _ = client.submit(MODEL, "", 0, LARGE)
        later, _ = await broker.request()
        assert later.payload_shm != header.payload_shm
        broker.reply_in_slab(later, LARGE)
        reply = await asyncio.wait_for(fut, WAIT_S)
        assert reply.payload == LARGE

    run(tmp_path, monkeypatch, body)


@pytest.mark.timeout(30)
def test_a_reply_tagged_for_another_request_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(client: FabricClient, broker: FakeBroker) -> None:
        _, fut, _ = client.submit(MODEL, "", 0, LARGE)
        header, _ = await broker.request()
        broker.reply_in_slab(header, LARGE, tag=header.request_id + 1000)  # a stale writer
        reply = await asyncio.wait_for(fut, WAIT_S)
        assert reply.status == errors.INTERNAL
        assert reply.payload is None

        _, fut, _ = client.submit(MODEL, "", 0, LARGE[: MIN_BYTES - 1])  # inline
        inline_header, _ = await broker.request()
        broker.send(messages.reply(ReplyHeader(inline_header.request_id, "OK", payload_in_slab=10)))
        reply = await asyncio.wait_for(fut, WAIT_S)
        assert reply.status == errors.INTERNAL  # a reply in a slab the request never had

    run(tmp_path, monkeypatch, body)


@pytest.mark.timeout(30)
def test_close_removes_the_slabs_of_requests_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(client: FabricClient, broker: FakeBroker) -> None:
        futures = [client.submit(MODEL, "", 0, LARGE)[1] for _ in range(3)]
        for _ in futures:
            await broker.request()
        assert len(names(tmp_path)) == 3

    run(tmp_path, monkeypatch, body)
    assert names(tmp_path) == set()
