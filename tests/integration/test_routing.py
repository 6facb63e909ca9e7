"""Routing (``--routing FILE``) on real processes, driven by tritonclient: the weighted split
over 10,000 calls, stickiness across two frontends and a restart, the explicit version
override, metadata for public names, shadows that neither slow nor fail the client, and hot
reload of a valid and an invalid file. One stack serves the whole module."""

from __future__ import annotations

import asyncio
import queue
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from .conftest import STACKS_KEY, write_python_model
from .stack import Proc, Stack, free_port, wait_for
from .test_metrics import scrape, value

pytestmark = pytest.mark.timeout(180)

TAG_CONFIG = """\
name: "tag"
backend: "python"
max_batch_size: 8
dynamic_batching { }
version_policy { all { } }
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
ECHO = """\
import numpy as np


class Model:
    def load(self, config, device):
        pass

    def execute(self, inputs):
        return {"OUTPUT0": np.asarray(inputs["INPUT0"]).astype(np.int32)}
"""
SLOW_CONFIG = TAG_CONFIG.replace('"tag"', '"slow"').replace("dynamic_batching { }\n", "")
SLOW_DELAY_S = 0.05
SLOW = f"""\
import time

import numpy as np


class Model:
    def load(self, config, device):
        pass

    def execute(self, inputs):
        time.sleep({SLOW_DELAY_S})
        return {{"OUTPUT0": np.asarray(inputs["INPUT0"]).astype(np.int32)}}
"""

ROUTING = """\
routes:
  tag:
    targets:
      - {model: tag, version: "1", weight: 70}
      - {model: tag, version: "2", weight: 30}
  sticky:
    targets:
      - {model: tag, version: "1", weight: 50}
      - {model: tag, version: "2", weight: 50}
    sticky: {header: x-routing-key}
  shadowed:
    targets:
      - {model: tag, version: "1", weight: 100}
    shadow:
      - {model: slow, version: "1", fraction: 1.0, atol: 0.0}
"""
SPLIT_CALLS = 10_000
CONCURRENCY = 32
RELOAD_WITHIN_S = 2.0


class Routed:
    def __init__(self, stack: Stack, routing: Path, metrics_port: int) -> None:
        self.stack = stack
        self.routing = routing
        self.metrics_port = metrics_port

    def frontend_args(self, metrics_port: int | None = None) -> list[str]:
        args = ["--routing", str(self.routing)]
        return args + (["--metrics-port", str(metrics_port)] if metrics_port else [])

    def start_frontend(self, metrics_port: int | None = None) -> Proc:
        fe = self.stack.start_frontend(extra_args=self.frontend_args(metrics_port))
        self.stack.wait_live(fe)
        self.stack.wait_ready(["tag", "slow", "shadowed"], frontend=fe)
        return fe


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    root = tmp_path_factory.mktemp("routing")
    repo = root / "models"
    write_python_model(repo, "tag", TAG_CONFIG, ECHO)
    (repo / "tag" / "2").mkdir()
    (repo / "tag" / "2" / "model.py").write_text(ECHO)
    write_python_model(repo, "slow", SLOW_CONFIG, SLOW)
    routing = root / "routing.yaml"
    routing.write_text(ROUTING)
    stack = Stack(log_dir=root, model_repository=repo, name="routing")
    r = Routed(stack, routing, free_port())
    try:
        stack.start_broker()
        stack.start_worker()
        r.start_frontend(r.metrics_port)
        r.start_frontend()
        yield r
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(routed: Routed, request: pytest.FixtureRequest) -> None:
    request.node.stash.setdefault(STACKS_KEY, []).append(routed.stack)


def _inputs(value_: int = 1) -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("INPUT0", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value_]], dtype=np.int32))
    return [x]


async def _versions(url: str, model: str, calls: int, concurrency: int) -> Counter[str]:
    """How many of ``calls`` each version served, ``concurrency`` calls at a time."""
    seen: Counter[str] = Counter()
    client = aioclient.InferenceServerClient(url)
    x = aioclient.InferInput("INPUT0", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], dtype=np.int32))
    left = iter(range(calls))

    async def one_lane() -> None:
        for _ in left:
            result = await client.infer(model, [x])
            response = result.get_response()
            assert response.model_name == "tag"
            seen[response.model_version] += 1

    try:
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
    finally:
        await client.close()
    return seen


def test_split_over_ten_thousand_calls_is_within_two_points(routed: Routed) -> None:
    fronts = routed.stack.frontends
    start = time.monotonic()

    async def both() -> list[Counter[str]]:
        half = SPLIT_CALLS // len(fronts)
        lanes = CONCURRENCY // len(fronts)
        return await asyncio.gather(*(_versions(f.url, "tag", half, lanes) for f in fronts))

    seen = sum(asyncio.run(both()), Counter())
    elapsed = time.monotonic() - start
    assert sum(seen.values()) == SPLIT_CALLS
    shares = {v: 100.0 * n / SPLIT_CALLS for v, n in seen.items()}
    print(f"split over {SPLIT_CALLS} calls at c={CONCURRENCY}: {shares} in {elapsed:.1f}s")
    assert abs(shares["1"] - 70.0) <= 2.0 and abs(shares["2"] - 30.0) <= 2.0, shares


def _sticky_map(fe: Proc, keys: list[str]) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(fe.url)
    try:
        out = {}
        for key in keys:
            result = client.infer("sticky", _inputs(), headers={"x-routing-key": key})
            out[key] = result.get_response().model_version
        return out
    finally:
        client.close()


def test_sticky_keys_agree_across_replicas_and_a_restart(routed: Routed) -> None:
    keys = [f"user-{i}" for i in range(150)]
    first, second = routed.stack.frontends[:2]
    a = _sticky_map(first, keys)
    assert set(a.values()) == {"1", "2"}  # the keys spread over both targets
    assert _sticky_map(first, keys) == a  # the same key, the same target
    assert _sticky_map(second, keys) == a  # on every replica
    routed.stack.kill(second, sig=15)
    routed.stack.procs.remove(second)  # a dead process would fail the stack's waits
    second.log_file.close()
    restarted = routed.start_frontend()
    assert _sticky_map(restarted, keys) == a  # and after a restart


def test_explicit_version_and_metadata_of_public_names(routed: Routed) -> None:
    client = routed.stack.client()
    for _ in range(30):
        result = client.infer("tag", _inputs(), model_version="2")
        assert result.get_response().model_version == "2"
    result = client.infer("shadowed", _inputs(7), model_version="1")
    assert result.get_response().model_name == "tag"
    assert result.as_numpy("OUTPUT0").tolist() == [[7]]
    assert client.is_model_ready("shadowed") and client.is_model_ready("sticky", "2")
    meta = client.get_model_metadata("shadowed")
    assert meta.name == "tag" and [t.name for t in meta.inputs] == ["INPUT0"]
    assert client.get_model_config("sticky").config.name == "tag"
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("shadowed", "")] == "READY" and index[("sticky", "")] == "READY"
    assert index[("tag", "1")] == "READY" and ("tag", "") not in index  # tag is a model name


def test_stream_calls_are_routed_with_the_stream_header(routed: Routed) -> None:
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(routed.stack.frontend.url)
    expected = _sticky_map(routed.stack.frontend, ["user-3"])["user-3"]
    client.start_stream(
        lambda result, error: replies.put((result, error)), headers={"x-routing-key": "user-3"}
    )
    try:
        for i in range(20):
            client.async_stream_infer("sticky", _inputs(i), request_id=str(i))
        client.async_stream_infer("tag", _inputs(), model_version="2", request_id="v2")
        got = [replies.get(timeout=30) for _ in range(21)]
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    assert all(error is None for _, error in got), got
    versions = {r.get_response().id: r.get_response().model_version for r, _ in got}
    assert versions.pop("v2") == "2"
    assert set(versions.values()) == {expected}  # the stream's key pins every call


def _p50_ms(client: grpcclient.InferenceServerClient, model: str, version: str) -> float:
    times = []
    for i in range(120):
        start = time.perf_counter()
        client.infer(model, _inputs(i), model_version=version)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[20:])


def test_shadow_leaves_the_client_p50_alone_and_is_bounded_under_overload(
    routed: Routed,
) -> None:
    client = routed.stack.client()
    # The same target without (explicit version: no split, no shadow) and with a shadow to
    # a model that sleeps 50 ms per call; alternated to share the machine's noise.
    plain, shadowed = [], []
    for _ in range(3):
        plain.append(_p50_ms(client, "shadowed", "1"))
        shadowed.append(_p50_ms(client, "shadowed", ""))
    p_plain, p_shadow = statistics.median(plain), statistics.median(shadowed)
    print(f"client p50: {p_plain:.2f} ms without shadow, {p_shadow:.2f} ms with")
    assert p_shadow < p_plain * 1.5 + 2.0, (plain, shadowed)
    assert p_shadow < SLOW_DELAY_S * 1e3 / 2  # never waits for the shadow's 50 ms

    before = scrape(routed.metrics_port)
    start = time.monotonic()
    seen = asyncio.run(_versions(routed.stack.frontend.url, "shadowed", 1500, 64))
    elapsed = time.monotonic() - start
    assert seen == Counter({"1": 1500})  # every call answered, none RESOURCE_EXHAUSTED

    def shadow(text: str, result: str) -> float:
        return value(text, "fabric_route_shadow_total", route="shadowed", result=result)

    def settled() -> str | None:
        text = scrape(routed.metrics_port)
        counted = sum(shadow(text, r) for r in ("match", "mismatch", "error", "drop"))
        return (
            text
            if counted - sum(shadow(before, r) for r in ("match", "mismatch", "error", "drop"))
            >= 1500
            else None
        )

    after = wait_for(settled, timeout_s=10, what="every shadow accounted", watch=routed.stack.procs)
    compared = shadow(after, "match") - shadow(before, "match")
    dropped = shadow(after, "drop") - shadow(before, "drop")
    print(f"overload: {elapsed:.1f}s, shadows compared {compared:.0f}, dropped {dropped:.0f}")
    assert shadow(after, "mismatch") == 0 and compared > 0 and dropped > 0
    # At most 8 shadows in flight, each held >= 50 ms by the one slow instance.
    assert compared <= 8 * (elapsed + 1.0) / SLOW_DELAY_S


def test_reload_of_a_valid_then_an_invalid_file(routed: Routed) -> None:
    client = routed.stack.client()
    port = routed.metrics_port
    errors_before = value(scrape(port), "fabric_routing_reload_errors_total")
    try:
        routed.routing.write_text(
            ROUTING.replace('"1", weight: 70', '"1", weight: 0').replace(
                '"2", weight: 30', '"2", weight: 100'
            )
        )
        start = time.monotonic()
        wait_for(
            lambda: all(
                client.infer("tag", _inputs()).get_response().model_version == "2"
                for _ in range(20)
            ),
            timeout_s=RELOAD_WITHIN_S,
            what="the edit in force",
            interval_s=0.01,
        )
        print(f"valid edit in force after {time.monotonic() - start:.2f}s")
        routed.routing.write_text(ROUTING.replace('"2", weight: 30', '"2", weight: 31'))
        wait_for(
            lambda: value(scrape(port), "fabric_routing_reload_errors_total") > errors_before,
            timeout_s=RELOAD_WITHIN_S,
            what="the bad edit refused",
        )
        versions = {client.infer("tag", _inputs()).get_response().model_version for _ in range(50)}
        assert versions == {"2"}  # the routing in force stayed
        log = routed.stack.frontend.log_text()
        assert log.count("targets: weights add up to 101, not 100") == 1
    finally:
        routed.routing.write_text(ROUTING)
