"""Shadow copies: compared within the tolerance, counted, bounded, dropped first, never
holding up or failing the primary."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from fabric import errors
from fabric.errors import RequestError
from frontend.fabric_client import Reply
from frontend.routing.config import parse_routing
from frontend.routing.metrics import RoutingMetrics
from frontend.routing.shadow import Shadows, outputs_match
from frontend.routing.table import RouteState, build_state
from protos import grpc_service_pb2 as pb


def _response(**outputs: np.ndarray) -> bytes:
    r = pb.ModelInferResponse(model_name="clf", model_version="1")
    for name, array in outputs.items():
        r.outputs.add(name=name, datatype="FP32" if array.dtype == np.float32 else "INT32",
                      shape=list(array.shape))  # fmt: skip
        r.raw_output_contents.append(array.tobytes())
    return r.SerializeToString()


A = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


def test_outputs_match_within_atol_per_output() -> None:
    base = _response(Y=A, N=np.array([[1, 2]], dtype=np.int32))
    near = _response(Y=A + 5e-5, N=np.array([[1, 2]], dtype=np.int32))
    far = _response(Y=A + 1e-2, N=np.array([[1, 2]], dtype=np.int32))
    assert outputs_match(base, base, 0.0)
    assert outputs_match(base, near, 1e-4)
    assert not outputs_match(base, near, 0.0)  # no tolerance: bytes must agree
    assert not outputs_match(base, far, 1e-4)
    assert not outputs_match(base, _response(Y=A), 1e-4)  # an output missing
    assert not outputs_match(base, _response(Y=A.reshape(3, 1), N=np.zeros((1, 2))), 1e-4)
    assert not outputs_match(_response(Y=A), _response(Z=A), 1e-4)


def _state(fraction: float = 1.0) -> RouteState:
    text = (
        "routes:\n  clf:\n    targets: [{model: clf, version: '1', weight: 100}]\n"
        f"    shadow: [{{model: nxt, version: '1', fraction: {fraction}, atol: 0.001}}]\n"
    )
    return build_state("clf", parse_routing(text.encode()).routes["clf"])


@dataclass
class HeldClient:
    """Shadow replies come only when the test sets them."""

    futures: list[asyncio.Future[Reply]] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    refuse: bool = False

    def submit(
        self, model: str, version: str, deadline_ns: int, payload: bytes
    ) -> tuple[int, asyncio.Future[Reply], object]:
        if self.refuse:
            raise RequestError(errors.UNAVAILABLE, "no broker")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return len(self.futures), fut, None

    def cancel(self, request_id: int) -> None:
        self.cancels.append(request_id)


def _done(reply: Reply) -> asyncio.Future[Reply]:
    fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    fut.set_result(reply)
    return fut


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_bound_and_counts() -> None:
    async def main() -> dict[str, int]:
        client, metrics = HeldClient(), RoutingMetrics()
        shadows = Shadows(client, metrics, lambda: 0.0, max_in_flight=8)
        state = _state()
        primary = _done(Reply(errors.OK, "", _response(Y=A)))
        for _ in range(20):
            shadows.start(state, b"req", 5.0, primary, lambda: 0.0)
        await _settle()
        assert shadows.in_flight == 8 and len(client.futures) == 8
        replies = [_response(Y=A + 1e-4)] * 5 + [_response(Y=A + 1.0)] * 2
        for fut, body in zip(client.futures, replies, strict=False):
            fut.set_result(Reply(errors.OK, "", body))
        client.futures[7].set_result(Reply(errors.INTERNAL, "boom", None))
        await _settle()
        assert shadows.in_flight == 0
        return metrics.target("clf", "nxt", "1").shadow

    assert asyncio.run(main()) == {"match": 5, "mismatch": 2, "error": 1, "drop": 12}


def test_dropped_under_load_and_when_the_primary_was_refused() -> None:
    async def main() -> dict[str, int]:
        client, metrics = HeldClient(), RoutingMetrics()
        load = [0.9]
        shadows = Shadows(client, metrics, lambda: load[0])
        ok = _done(Reply(errors.OK, "", _response(Y=A)))
        shadows.start(_state(), b"req", 5.0, ok, lambda: 0.0)
        load[0] = 0.1
        refused = _done(Reply(errors.RESOURCE_EXHAUSTED, "full", None))
        shadows.start(_state(), b"req", 5.0, refused, lambda: 0.0)
        await _settle()
        assert client.futures == []
        return metrics.target("clf", "nxt", "1").shadow

    assert asyncio.run(main())["drop"] == 2


def test_fraction_errors_timeouts_and_a_failed_primary() -> None:
    async def main() -> tuple[dict[str, int], list[int]]:
        client, metrics = HeldClient(), RoutingMetrics()
        shadows = Shadows(client, metrics, lambda: 0.0)
        state = _state(fraction=0.5)
        ok = _done(Reply(errors.OK, "", _response(Y=A)))
        shadows.start(state, b"req", 5.0, ok, lambda: 0.7)  # not drawn
        await _settle()
        assert client.futures == []
        client.refuse = True
        shadows.start(state, b"req", 5.0, ok, lambda: 0.1)  # cannot be sent: an error
        await _settle()
        client.refuse = False
        shadows.start(state, b"req", 0.01, ok, lambda: 0.1)  # never answered: an error
        await asyncio.sleep(0.05)
        failed = _done(Reply(errors.INTERNAL, "primary failed", None))
        shadows.start(state, b"req", 5.0, failed, lambda: 0.1)  # nothing to compare with
        await _settle()
        client.futures[-1].set_result(Reply(errors.OK, "", _response(Y=A)))
        await _settle()
        assert shadows.in_flight == 0
        return metrics.target("clf", "nxt", "1").shadow, client.cancels

    counts, cancels = asyncio.run(main())
    assert counts == {"match": 0, "mismatch": 0, "error": 2, "drop": 0}
    assert cancels == [1]


def test_a_shadow_waits_for_the_primary_and_close_cancels_it() -> None:
    async def main() -> int:
        client, metrics = HeldClient(), RoutingMetrics()
        shadows = Shadows(client, metrics, lambda: 0.0)
        primary: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        shadows.start(_state(), b"req", 5.0, primary, lambda: 0.0)
        await _settle()
        client.futures[0].set_result(Reply(errors.OK, "", _response(Y=A)))
        await _settle()
        assert shadows.in_flight == 1  # waiting for the primary's reply to compare
        await shadows.close()
        return shadows.in_flight

    assert asyncio.run(main()) == 0
