"""The broker against an attacker on the same network (no CURVE, default flags), with real
processes: a raw pyzmq DEALER speaking ``fabric.protocol`` poisons no model, bloats no catalog,
gets no amplified answers and floods no log. Each of these failed before issue 15.

One stack (broker with a metrics port, one worker, one frontend) serves the whole module; each
test ends by proving that real ``simple`` calls still succeed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from fabric.messages import Message, iter_messages
from fabric.protocol import (
    PROTOCOL_TAG,
    TYPE_FRAME,
    HeartbeatHeader,
    ModelAnnouncement,
    MsgType,
    ReadyHeader,
    encode,
    encode_header,
    pack_batch,
)

from .conftest import STACKS_KEY
from .helpers import check_simple, rand_int32, simple_inputs
from .stack import DEMO_MODELS, HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Stack, free_port, wait_for
from .test_metrics import scrape, value

pytestmark = pytest.mark.timeout(240)

EXPIRY_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
"""How long the broker keeps a silent peer."""
AMPLIFICATION_BOUND = 0.1
"""The attacker may receive at most this fraction of the bytes it sent (one catalog and a few
heartbeats answer 100,000 heartbeats: a few kB for 900 kB)."""
MALFORMED_LOG_LINES = 60
"""Broker log lines allowed for 40,000 malformed messages (rate-limited: a few per peer and a
summary per window)."""


@dataclass
class AttackedStack(Stack):
    """A stack whose broker serves Prometheus metrics on ``metrics_port``."""

    metrics_port: int = field(default_factory=free_port)

    def broker_metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.metrics_port), name, **labels)


@pytest.fixture(scope="module")
def attacked(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackedStack]:
    stack = AttackedStack(
        log_dir=tmp_path_factory.mktemp("attacked"), model_repository=model_repo, name="attacked"
    )
    try:
        stack.start_broker(["--metrics-port", str(stack.metrics_port)])
        stack.start_worker()
        stack.start_frontend()
        stack.wait_live()
        stack.wait_ready(DEMO_MODELS)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(attacked: AttackedStack, request: pytest.FixtureRequest) -> Iterator[AttackedStack]:
    request.node.stash.setdefault(STACKS_KEY, []).append(attacked)
    yield attacked
    attacked.assert_alive()


Dealer = Callable[[str, bytes], zmq.Socket[bytes]]


@pytest.fixture
def dealer() -> Iterator[Dealer]:
    """Raw DEALER sockets (the attacker's), connected to an endpoint with an identity; all
    closed when the test ends."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []

    def connect(endpoint: str, identity: bytes) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()


def real_config(stack: Stack) -> Any:
    return stack.client().get_model_config("simple", client_timeout=5.0).config


def simple_latencies(stack: Stack, calls: int) -> list[float]:
    client = stack.client()
    rng = np.random.default_rng(3)
    out = []
    for _ in range(calls):
        a, b = rand_int32(rng, 1), rand_int32(rng, 1)
        started = time.monotonic()
        result = client.infer("simple", simple_inputs(a, b), client_timeout=10)
        out.append(time.monotonic() - started)
        assert (result.as_numpy("OUTPUT0") == a + b).all()
    return out


def test_a_departed_peers_announcement_does_not_poison_a_model(
    stack: AttackedStack, dealer: Dealer
) -> None:
    config = real_config(stack)
    assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds != 1
    evil = type(config)()
    evil.CopyFrom(config)
    evil.dynamic_batching.default_queue_policy.default_timeout_microseconds = 1
    attacker = dealer(stack.broker_worker_addr, b"attacker-poison")
    announcement = ModelAnnouncement("simple", "1", evil.SerializeToString(), 8)
    attacker.send_multipart(encode(MsgType.READY, ReadyHeader([announcement])))
    time.sleep(0.6)  # connected for 0.6 s, as the attacker was
    assert real_config(stack) == config, "a live attacker replaced the config"
    attacker.close(linger=0)
    wait_for(
        lambda: stack.broker_metric("fabric_broker_workers") == 1,
        timeout_s=EXPIRY_S + 10,
        what="the broker drops the silent attacker",
        watch=stack.procs,
    )
    time.sleep(2 * HEARTBEAT_INTERVAL_S)  # catalogs reach the frontend
    assert real_config(stack) == config
    assert max(simple_latencies(stack, 20)) < 5.0
    assert stack.broker_metric("fabric_broker_conflicting_versions_total") >= 1


def test_a_bloated_announcement_is_refused_and_frontends_keep_serving(
    stack: AttackedStack, dealer: Dealer
) -> None:
    fat = b"\x00" * 100_000
    attackers = [dealer(stack.broker_worker_addr, b"attacker-bloat-%d" % i) for i in range(3)]
    for i, sock in enumerate(attackers):  # 750 fake models, 75 MB of configs, 3 READYs
        models = [ModelAnnouncement(f"fake{i}_{j}", "1", fat, 1) for j in range(250)]
        sock.send_multipart(encode(MsgType.READY, ReadyHeader(models)))
    heartbeat = encode(MsgType.HEARTBEAT, HeartbeatHeader())

    def attackers_alive() -> bool:
        for sock in attackers:  # they stay connected, as an attacker would
            sock.send_multipart(heartbeat)
        return stack.broker_metric("fabric_broker_workers") >= 4

    wait_for(
        attackers_alive,
        timeout_s=30,
        what="the broker reads the three announcements",
        watch=stack.procs,
    )
    client = stack.client()
    deadline = time.monotonic() + max(3.0, 2 * EXPIRY_S)  # longer than the frontend's patience
    while time.monotonic() < deadline:
        check_simple(client)
        names = {m.name for m in client.get_model_repository_index().models}
        assert not any(n.startswith("fake") for n in names), sorted(names)[:5]
        assert client.is_model_ready("simple")
        attackers_alive()  # best effort: a slow iteration may let them expire, harmlessly
        time.sleep(0.2)
    assert stack.broker_metric("fabric_broker_refused_announcements_total") >= 3


def test_a_batch_of_heartbeats_is_not_amplified(stack: AttackedStack, dealer: Dealer) -> None:
    baseline = simple_latencies(stack, 20)
    latencies: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def victim() -> None:
        try:
            while not stop.is_set():
                latencies.extend(simple_latencies(stack, 1))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    attacker = dealer(stack.broker_frontend_addr, b"attacker-amplify")
    stale = [TYPE_FRAME[MsgType.HEARTBEAT], encode_header(HeartbeatHeader(1))]
    batch = pack_batch([stale] * 100_000)
    sent = sum(len(f) for f in batch)
    thread = threading.Thread(target=victim, name="victim-client")
    thread.start()
    try:
        # The attack lands while the victim is calling: once it has made its first call.
        wait_for(lambda: bool(latencies) or bool(errors), timeout_s=30, what="the victim calling")
        attacker.send_multipart(batch)
        received = 0
        end = time.monotonic() + 2.0
        while (left := end - time.monotonic()) > 0:
            if attacker.poll(int(left * 1000) + 1):
                received += sum(len(f) for f in attacker.recv_multipart())
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert received > 0, "the broker answered nothing at all"
    assert received < AMPLIFICATION_BOUND * sent, f"sent {sent} bytes, received {received}"
    assert latencies, "the victim made no call"
    limit = max(1.0, 3 * max(baseline))
    assert max(latencies) < limit, (
        f"a concurrent call took {max(latencies):.2f}s (baseline max {max(baseline):.3f}s)"
    )


def test_malformed_frames_are_counted_and_their_logs_bounded(
    stack: AttackedStack, dealer: Dealer
) -> None:
    before_lines = len(stack.broker.log_text().splitlines())
    text = scrape(stack.metrics_port)
    counted = any(line.startswith("fabric_malformed_messages_total{") for line in text.splitlines())
    before = value(text, "fabric_malformed_messages_total") if counted else 0.0
    to_frontends = dealer(stack.broker_frontend_addr, b"attacker-junk-fe")
    to_workers = dealer(stack.broker_worker_addr, b"attacker-junk-w")
    junk = [
        [b"junk"],  # no tag, too few frames
        [b"FAB0", TYPE_FRAME[MsgType.REQUEST], b"\x90", b"x"],  # another protocol version
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.REQUEST], b"\xc1", b"x"],  # undecodable header
        [PROTOCOL_TAG, b"\x77", b"\x90"],  # unknown type
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.BATCH], b"not msgpack"],
    ]
    worker_junk = [
        [b"junk"],
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.READY], b"\xc1"],
        [PROTOCOL_TAG, TYPE_FRAME[MsgType.READY], b"\x91\x91\x01"],  # READY of wrong shape
    ]
    for i in range(20_000):
        to_frontends.send_multipart(junk[i % len(junk)])
        to_workers.send_multipart(worker_junk[i % len(worker_junk)])
    wait_for(
        lambda: (
            stack.broker_metric("fabric_malformed_messages_total", tier="broker") >= before + 40_000
        ),
        timeout_s=60,
        what="the broker counts 40,000 malformed messages",
        watch=stack.procs,
    )
    assert stack.broker_metric("fabric_malformed_messages_total", reason="envelope") >= 10_000
    assert stack.broker_metric("fabric_malformed_messages_total", reason="ready") >= 10_000
    check_simple(stack.client())
    added = stack.broker.log_text().splitlines()[before_lines:]
    assert len(added) < MALFORMED_LOG_LINES, "\n".join(added[:20])


def test_a_stolen_frontend_identity_takes_nothing_over(
    stack: AttackedStack, dealer: Dealer
) -> None:
    """A spy on the worker port learns the frontend's identity from the requests routed to it
    (workers see it on every request) and connects to the frontend port with it: the broker
    neither hands the spy the frontend's traffic nor cuts the frontend off."""
    spy = dealer(stack.broker_worker_addr, b"spy-worker")
    spy.send_multipart(encode(MsgType.READY, ReadyHeader(
        [ModelAnnouncement("spied", "1", b"\x0a\x05spied", capacity=10)])))  # fmt: skip
    client = stack.client()
    wait_for(lambda: client.is_model_ready("spied"), timeout_s=30, what="the spy's model listed")
    caller = threading.Thread(target=_call_quietly, args=(client, "spied"), daemon=True)
    caller.start()
    frontend_identity = b""
    deadline = time.monotonic() + 10
    while not frontend_identity and time.monotonic() < deadline:
        if not spy.poll(100):
            continue
        for msg in iter_messages(spy.recv_multipart(), routed=True):  # heartbeats come too
            if isinstance(msg, Message) and msg.type is MsgType.REQUEST:
                frontend_identity = msg.route
    assert frontend_identity, "no request reached the spy"
    thief = dealer(stack.broker_frontend_addr, frontend_identity)
    for _ in range(20):  # heartbeats as the frontend would send them
        thief.send_multipart(encode(MsgType.HEARTBEAT, HeartbeatHeader(0)))
        time.sleep(0.02)
    for seed in range(100):
        check_simple(client, seed)
    assert thief.poll(500) == 0, "the thief received the frontend's traffic"
    caller.join(5)


def _call_quietly(client: Any, model: str) -> None:
    try:
        client.infer(model, [], client_timeout=2)
    except Exception:  # the spy never answers: this call times out, by design
        pass
