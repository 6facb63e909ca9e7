"""Review findings in the frontend: unbounded per-model state keyed by client input, retries
of non-idempotent requests, a peer's bad config breaking every model, and requests left waiting
on a broker that restarted."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import zmq

from bench.lifecycle import free_port
from fabric import errors
from fabric.protocol import (
    FLAG_NON_IDEMPOTENT,
    PROTOCOL_TAG,
    TYPE_FRAME,
    CatalogEntry,
    HeartbeatHeader,
    MsgType,
    encode_header,
    unpack_batch,
)
from frontend.brokers import BrokerGate
from frontend.config import FrontendConfig
from frontend.fabric_client import FabricClient, Reply
from frontend.inference_service import InferenceService
from frontend.wire import RequestRoute
from protos import model_config_pb2 as mc


def open_gate() -> BrokerGate:
    """The gate of a frontend whose broker is live: calls go straight on."""
    gate = BrokerGate(0.0)
    gate.worker_up()
    return gate


@dataclass
class FakeClient:
    """Answers every submit at once with the next scripted reply."""

    configs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    script: list[Reply] = field(default_factory=list)
    submits: list[tuple[str, int]] = field(default_factory=list)
    catalog_version: int = 1
    gate: BrokerGate = field(default_factory=open_gate)

    def submit(
        self, model: str, version: str, deadline_ns: int, payload: bytes, **kw: int
    ) -> tuple[int, asyncio.Future[Reply], object]:
        self.submits.append((model, kw.get("flags", 0)))
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        reply = self.script.pop(0) if self.script else Reply(errors.OK, "", b"resp")
        fut.set_result(reply)
        return len(self.submits), fut, None

    def cancel(self, request_id: int) -> None:
        pass

    def models(self) -> dict[tuple[str, str], tuple[CatalogEntry, int]]:
        return {k: (CatalogEntry(k[0], k[1], c, 1), 1) for k, c in self.configs.items()}

    def workers(self) -> int:
        return 1


def service(client: FakeClient) -> InferenceService:
    return InferenceService(FrontendConfig(), client, "test")  # type: ignore[arg-type]


def config_bytes(name: str, **params: str) -> bytes:
    config = mc.ModelConfig(name=name)
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config.SerializeToString()


def test_unknown_model_names_do_not_grow_state() -> None:
    client = FakeClient(configs={("m", "1"): config_bytes("m")})
    svc = service(client)

    async def run() -> None:
        for i in range(2000):
            client.script.append(Reply(errors.NOT_FOUND, "unknown model", None))
            reply = await svc.infer(RequestRoute(f"nope-{i}", "", ""), b"", None)
            assert reply.status == errors.NOT_FOUND

    asyncio.run(run())
    assert len(svc._latency) < 100
    assert len(svc.metrics.models) < 100


def test_non_idempotent_request_is_not_retried_after_its_broker_was_lost() -> None:
    client = FakeClient(
        configs={("once", "1"): config_bytes("once", idempotent="false")},
        # What FabricClient answers for a non-idempotent request whose broker was lost.
        script=[Reply(errors.ABORTED, "broker tcp://b:5555 restarted; it may have run", None)],
    )
    svc = service(client)
    reply = asyncio.run(svc.infer(RequestRoute("once", "", ""), b"", None))
    assert len(client.submits) == 1, f"sent {len(client.submits)} times, last {reply.status}"
    assert reply.status == errors.ABORTED


def test_bad_config_from_a_peer_does_not_break_other_models() -> None:
    client = FakeClient(configs={("good", "1"): config_bytes("good"), ("bad", "1"): b"\xff\xff"})
    svc = service(client)
    reply = asyncio.run(svc.infer(RequestRoute("good", "", ""), b"", None))
    assert reply.status == errors.OK


# ---- a broker restarted within the heartbeat TTL ---------------------------------------------


class FakeBroker(threading.Thread):
    """A ROUTER that answers heartbeats and records the requests it got (then drops them)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        super().__init__(name="fake-broker", daemon=True)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        give_up = time.monotonic() + 10
        while True:  # a closed ROUTER frees its port asynchronously: retry a restart's bind
            try:
                self.sock.bind(endpoint)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > give_up:
                    self.sock.close(linger=0)
                    raise
                time.sleep(0.02)
        self.requests = 0
        self.stopping = threading.Event()
        # Like a real broker: each process has its own random incarnation.
        hb = HeartbeatHeader(7, random.randrange(1, 2**62))
        self.hb = [PROTOCOL_TAG, TYPE_FRAME[MsgType.HEARTBEAT], encode_header(hb)]

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.sock.poll(20):
                continue
            frames = self.sock.recv_multipart()
            if frames[2] == TYPE_FRAME[MsgType.REQUEST]:
                self.requests += 1
            elif frames[2] == TYPE_FRAME[MsgType.BATCH]:  # coalesced by the frontend
                subs = unpack_batch(frames[3])
                self.requests += sum(sub[0] == TYPE_FRAME[MsgType.REQUEST] for sub in subs)
            elif frames[2] == TYPE_FRAME[MsgType.HEARTBEAT]:
                self.sock.send_multipart([frames[0], *self.hb])
        self.sock.close(linger=0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5.0)


@pytest.mark.timeout(60)
def test_requests_on_a_restarted_broker_fail_fast() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    interval_s, liveness = 0.1, 5  # TTL 0.5 s
    broker = FakeBroker(ctx, endpoint)
    broker.start()

    async def run() -> Reply | None:
        current = broker
        client = FabricClient(
            [endpoint],
            heartbeat_interval_s=interval_s,
            heartbeat_liveness=liveness,
            max_message_bytes=1 << 20,
        )
        await client.start()
        try:
            give_up = time.monotonic() + 5
            while not client._links[0].liveness.alive():
                assert time.monotonic() < give_up, "fake broker never seen"
                await asyncio.sleep(0.02)
            _, fut, _ = client.submit("m", "1", 0, b"payload")
            _, once, _ = client.submit("m", "1", 0, b"payload", flags=FLAG_NON_IDEMPOTENT)
            while current.requests < 2:
                assert time.monotonic() < give_up, "request never reached the broker"
                await asyncio.sleep(0.01)
            current.stop()  # the broker dies with the request ...
            current = FakeBroker(ctx, endpoint)  # ... and is back at once
            current.start()
            try:
                # Ten TTLs later the lost request must have been failed (retryable).
                reply = await asyncio.wait_for(asyncio.shield(fut), timeout=10 * interval_s * 5)
                # The non-idempotent one may have run: it fails ABORTED, never retryable.
                assert (await once).status == errors.ABORTED
                return reply
            except TimeoutError:
                return None
            finally:
                current.stop()
        finally:
            await client.close()

    try:
        reply = asyncio.run(run())
    finally:
        broker.stop()
        ctx.destroy(linger=0)
    assert reply is not None, "request still waiting on a broker that no longer has it"
    assert reply.status == errors.UNAVAILABLE
