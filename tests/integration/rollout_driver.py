"""Fake frontends for the rollout tests: raw DEALERs speaking ``fabric.messages`` to a real
broker, reporting routes on their heartbeats, following the decisions they hear, and sending
real ModelInferRequests (tritonclient's copy of the protos) to the targets the decisions pick.

What the real frontend's routing layer does, reduced to what the broker side needs: so the
broker's outcome windows, rule, clock and announcements are tested with real processes.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from tritonclient.grpc import service_pb2

from fabric import messages
from fabric.messages import Message
from fabric.protocol import CatalogHeader, HeartbeatHeader, ReplyHeader, RequestHeader
from fabric.routes import RouteDecision, RouteSpec, TargetKey, canonical_digest, effective_weights

from .route_models import DIM

HEARTBEAT_EVERY_S = 0.1
DEADLINE_S = 20.0


def route_spec(
    name: str,
    canary: str,
    *,
    weights: tuple[int, int] = (80, 20),
    steps: list[int] | None = None,
    dwell_s: float = 0.0,
    window_s: float = 30.0,
    min_requests: int = 100,
    max_error_rate_delta: float = 0.05,
    max_p99_ratio: float = 2.0,
    stable: str = "clf",
) -> RouteSpec:
    """A two-target route (``stable`` then ``canary``, version 1 each) with its digest."""
    targets = [TargetKey(stable, "1"), TargetKey(canary, "1")]
    body = {
        "name": name,
        "targets": [[t.model, t.version, w] for t, w in zip(targets, weights, strict=True)],
        "rollout": [steps or [], dwell_s],
        "rollback": [window_s, min_requests, max_error_rate_delta, max_p99_ratio],
    }
    return RouteSpec(
        name,
        canonical_digest(body),
        targets,
        list(weights),
        steps or [],
        dwell_s,
        window_s,
        min_requests,
        max_error_rate_delta,
        max_p99_ratio,
    )


def infer_request(model: str, n: int) -> bytes:
    """A serialized ModelInferRequest: INPUT0 = [n, n+1, n+2, n+3]."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version="1")
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="INPUT0", datatype="INT32", shape=[DIM]
    )
    request.inputs.append(tensor)
    values = bytearray()
    for i in range(DIM):
        values += (n + i).to_bytes(4, "little", signed=True)
    request.raw_input_contents.append(bytes(values))
    return request.SerializeToString()


@dataclass
class FakeFrontend:
    sock: zmq.Socket[bytes]
    routes: list[RouteSpec]
    generation: int = 0
    catalog: CatalogHeader | None = None
    decisions: dict[str, RouteDecision] = field(default_factory=dict)  # by digest
    history: list[tuple[float, RouteDecision]] = field(default_factory=list)  # changes
    in_flight: dict[int, str] = field(default_factory=dict)  # request id -> model
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (model, status)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _last_heartbeat: float = 0.0

    def heartbeat(self) -> None:
        header = HeartbeatHeader(
            self.generation, routes=self.routes, decisions=list(self.decisions.values())
        )
        self.sock.send_multipart(messages.heartbeat(header))
        self._last_heartbeat = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_EVERY_S:
            self.heartbeat()

    def send(self, model: str, n: int) -> None:
        rid = next(self._ids)
        deadline_ns = time.time_ns() + int(DEADLINE_S * 1e9)
        header = RequestHeader(rid, model, "1", deadline_ns)
        self.sock.send_multipart(messages.request(header, infer_request(model, n)))
        self.in_flight[rid] = model

    def pump(self) -> None:
        """Handle everything the broker sent so far."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for msg in messages.iter_messages(frames, routed=False):
                assert isinstance(msg, Message), f"malformed message from the broker: {msg}"
                self._handle(msg)

    def _handle(self, msg: Message) -> None:
        header = msg.header
        if isinstance(header, ReplyHeader):
            model = self.in_flight.pop(header.request_id, None)
            if model is not None:
                self.outcomes.append((model, header.status))
        elif isinstance(header, CatalogHeader):
            self.catalog = header
            self.generation = header.generation
        elif isinstance(header, HeartbeatHeader):
            for d in header.decisions:
                if self.decisions.get(d.digest) != d:
                    self.history.append((time.monotonic(), d))
                self.decisions[d.digest] = d

    def decision(self, spec: RouteSpec) -> RouteDecision | None:
        return self.decisions.get(spec.digest)

    def serving(self) -> set[str]:
        if self.catalog is None:
            return set()
        return {e.name for e in self.catalog.models if e.workers > 0}


class Fleet:
    """Fake frontends on one broker, driven together in one thread."""

    def __init__(self, endpoint: str, count: int, routes: list[RouteSpec]) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.frontends = []
        for _ in range(count):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self.frontends.append(FakeFrontend(sock, routes))
        self._poller = zmq.Poller()
        for fe in self.frontends:
            self._poller.register(fe.sock, zmq.POLLIN)
        self._n = itertools.count(1)
        self._rng = random.Random(12)

    def close(self) -> None:
        for fe in self.frontends:
            fe.sock.close(linger=0)
        self.ctx.term()

    def step(self, timeout_ms: int = 10) -> None:
        for fe in self.frontends:
            fe.tick()
        self._poller.poll(timeout_ms)
        for fe in self.frontends:
            fe.pump()

    def wait_serving(self, models: tuple[str, ...], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(set(models) <= fe.serving() for fe in self.frontends):
            assert time.monotonic() < deadline, f"models {models} never served"
            self.step(50)

    def drive(
        self,
        spec: RouteSpec,
        *,
        until: Callable[[], bool],
        timeout_s: float,
        concurrency: int = 4,
    ) -> bool:
        """Send calls through ``spec`` from every frontend (``concurrency`` in flight each),
        each to a target drawn with the weights its frontend's decision gives, until
        ``until()`` or ``timeout_s``; True when ``until()`` held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if until():
                return True
            for fe in self.frontends:
                weights = effective_weights(spec, fe.decision(spec))
                while len(fe.in_flight) < concurrency:
                    [target] = self._rng.choices(spec.targets, weights)
                    fe.send(target.model, next(self._n))
            self.step()
        return until()

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait for every call in flight to be answered."""
        deadline = time.monotonic() + timeout_s
        while any(fe.in_flight for fe in self.frontends):
            assert time.monotonic() < deadline, "calls in flight were never answered"
            self.step()

    def outcomes(self, model: str) -> list[str]:
        return [s for fe in self.frontends for m, s in fe.outcomes if m == model]
