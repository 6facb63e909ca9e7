"""The fabric client carries routes and decisions on its heartbeats: a change of routes is
sent to the broker at once, the broker's decisions reach ``RouteStates``, and the decisions held
go back to the broker. A fake broker (a ROUTER socket in the test) answers."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from fabric import messages
from fabric.messages import Message
from fabric.protocol import HeartbeatHeader
from fabric.routes import RouteDecision, RouteSpec, TargetKey
from frontend.fabric_client import FabricClient

INTERVAL_S = 3.0
"""Long against the 1 s within which a report must go out (at once, not at the next tick)."""
SPEC = RouteSpec(
    "clf", "d" * 64, [TargetKey("clf", "1"), TargetKey("clf", "2")], [90, 10],
    [10, 50], 1.0, 60.0, 10, 0.02, 2.0,
)  # fmt: skip
DECISION = RouteDecision("clf", "d" * 64, 1, 50, False, "")


async def heartbeat_from(
    router: zmq.Socket[bytes], timeout_s: float
) -> tuple[bytes, HeartbeatHeader]:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            frames = router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.01)
            continue
        for msg in messages.iter_messages(frames[1:], routed=False):
            if isinstance(msg, Message) and isinstance(msg.header, HeartbeatHeader):
                return frames[0], msg.header
    raise AssertionError("no heartbeat from the frontend")


@pytest.mark.timeout(30)
def test_routes_go_out_on_heartbeats_and_decisions_come_back() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    async def run() -> None:
        client = FabricClient(
            [f"tcp://127.0.0.1:{port}"],
            heartbeat_interval_s=INTERVAL_S,
            heartbeat_liveness=3,
            max_message_bytes=1 << 20,
        )
        await client.start()
        try:
            # The first heartbeat (at start, or a tick later if not connected yet).
            peer, first = await heartbeat_from(router, 3 * INTERVAL_S)
            assert first.routes == [] and first.decisions == []
            sent = time.monotonic()
            client.routes.report([SPEC])  # sent at once, not at the next tick
            _, reported = await heartbeat_from(router, 1.0)
            assert reported.routes == [SPEC]
            assert time.monotonic() - sent < 1.0
            answer = HeartbeatHeader(0, 7, decisions=[DECISION])
            router.send_multipart([peer, *messages.heartbeat(answer)])
            give_up = time.monotonic() + 5.0
            while client.routes.decision("clf", "d" * 64) != DECISION:
                assert time.monotonic() < give_up, "the decision never reached RouteStates"
                await asyncio.sleep(0.01)
            client.routes.report([SPEC])  # the same routes: nothing new to send
            client.routes.report([])
            _, emptied = await heartbeat_from(router, 1.0)
            assert emptied.routes == []
            client.routes.report([SPEC])
            _, again = await heartbeat_from(router, 1.0)
            assert again.decisions == [DECISION]  # what it follows goes back to the broker
        finally:
            await client.close()

    try:
        asyncio.run(run())
    finally:
        router.close(linger=0)
        ctx.term()
