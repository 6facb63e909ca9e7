"""The request hook: one target per call (its retries stay there), outcomes counted per
route and target, shadows started and always given the primary's outcome; the metadata
answers for public names."""

from __future__ import annotations

import asyncio

import pytest

from fabric import errors
from frontend.fabric_client import Reply
from frontend.routing.config import parse_routing
from frontend.routing.router import Router
from frontend.wire import RequestRoute

from .test_shadow import HeldClient

FILE = b"""
routes:
  clf:
    targets:
      - {model: clf, version: "1", weight: 50}
      - {model: clf, version: "2", weight: 50}
    sticky: {header: x-routing-key}
    shadow: [{model: nxt, version: "1"}]
  pair:
    targets:
      - {model: alpha, version: "1", weight: 100}
      - {model: beta, version: "1", weight: 0}
"""


def _router(draws: list[float]) -> tuple[Router, HeldClient]:
    client = HeldClient()
    it = iter(draws)
    return Router(parse_routing(FILE), client, lambda: 0.0, 30.0, draw=lambda: next(it)), client


def test_each_call_goes_to_one_target_and_is_counted_there() -> None:
    seen: list[RequestRoute] = []

    async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        seen.append(route)
        return Reply(errors.OK if route.version == "1" else errors.INTERNAL, "", b"")

    async def main() -> Router:
        router, _ = _router([0.9] * 10)  # draws >= 0.5: the second target, never a shadow
        for _ in range(3):
            await router.infer(infer, RequestRoute("pair", "", "id"), b"", 1.0, None)
        await router.infer(infer, RequestRoute("clf", "", "id"), b"", 1.0, lambda: [])
        await router.infer(infer, RequestRoute("pair", "", ""), b"", 1.0, None)  # no id
        return router

    router = asyncio.run(main())
    assert [(r.model, r.version, r.id) for r in seen] == [("alpha", "1", "id")] * 3 + [
        ("clf", "2", "id"),
        ("alpha", "1", ""),
    ]
    m = router.metrics
    assert m.target("pair", "alpha", "1").calls == 4
    assert m.target("clf", "clf", "2").calls == 1
    assert m.target("clf", "clf", "2").errors == {errors.INTERNAL: 1}


def test_sticky_header_pins_the_target_and_an_explicit_version_bypasses() -> None:
    seen: list[tuple[str, str]] = []

    async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        seen.append((route.model, route.version))
        return Reply(errors.OK, "", b"")

    async def main() -> None:
        router, _ = _router([0.99] * 100)
        md = [("x-routing-key", "user-1")]
        for _ in range(10):
            await router.infer(infer, RequestRoute("clf", "", "i"), b"", 1.0, lambda: md)
        await router.infer(infer, RequestRoute("clf", "9", "i"), b"", 1.0, lambda: md)
        await router.infer(infer, RequestRoute("pair", "1", "i"), b"", 1.0, None)

    asyncio.run(main())
    assert len(set(seen[:10])) == 1
    assert seen[10:] == [("clf", "9"), ("alpha", "1")]


def test_the_shadow_learns_the_primary_outcome_even_when_the_caller_goes_away() -> None:
    async def main() -> int:
        router, client = _router([0.0] * 10)

        async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
            await asyncio.sleep(10)
            raise AssertionError("cancelled before")

        call = asyncio.create_task(
            router.infer(infer, RequestRoute("clf", "", "i"), b"", 1.0, None)
        )
        await asyncio.sleep(0.01)
        assert len(client.futures) == 1  # the shadow went out
        client.futures[0].set_result(Reply(errors.OK, "", b""))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(5):
            await asyncio.sleep(0)
        assert router.metrics.target("clf", "clf", "1").errors == {errors.CANCELLED: 1}
        return router.shadows.in_flight

    assert asyncio.run(main()) == 0


def test_stream_infer_routes_public_names_only() -> None:
    seen: list[tuple[str, str]] = []

    async def infer(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        seen.append((route.model, route.version))
        return Reply(errors.OK, "", b"")

    async def main() -> None:
        router, _ = _router([0.9] * 10)
        routed = router.stream_infer(infer, [("x-routing-key", "k")])
        await routed(RequestRoute("pair", "", "i"), b"", None)
        await routed(RequestRoute("simple", "", "i"), b"", None)

    asyncio.run(main())
    assert seen == [("alpha", "1"), ("simple", "")]


def test_metadata_answers_for_the_primary_target() -> None:
    router, _ = _router([])
    assert router.answer_for("pair", "") == ("alpha", "1")
    assert router.answer_for("pair", "1") == ("alpha", "1")
    assert router.answer_for("clf", "2") == ("clf", "2")
    assert router.answer_for("clf", "") == ("clf", "1")
    assert router.answer_for("simple", "") == ("simple", "")
    models = {("alpha", "1"): (None, 0), ("beta", "1"): (None, 2), ("clf", "2"): (None, 1)}
    assert not router.ready("pair", models)  # beta is up but has no weight
    assert router.ready("clf", models)
    assert router.index(models, ready_only=False) == [("pair", False)]  # clf is a model name
    assert router.index(models, ready_only=True) == []
