"""Reloading the routing file: valid edits go in force, invalid ones are logged once and
counted while the routing in force stays; the watcher loop on a real file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from frontend.routing import watch as watch_mod
from frontend.routing.config import parse_routing
from frontend.routing.metrics import RoutingMetrics
from frontend.routing.router import Router
from frontend.routing.watch import Reloader, watch

from .test_shadow import HeldClient

V1 = b"routes: {clf: {targets: [{model: clf, version: '1', weight: 100}]}}\n"
V2 = b"routes: {clf: {targets: [{model: clf, version: '2', weight: 100}]}}\n"
BAD = b"routes: {clf: {targets: [{model: clf, version: '2', weight: 90}]}}\n"


def test_reloader_applies_valid_edits_and_refuses_bad_ones_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = RoutingMetrics()
    reloader = Reloader("r.yaml", V1, metrics)
    assert reloader.offer(V1) is None  # unchanged
    with caplog.at_level(logging.ERROR, logger="frontend.routing.watch"):
        assert reloader.offer(BAD) is None
        assert reloader.offer(BAD) is None
        assert reloader.offer(None, "cannot read it: No such file") is None
        assert reloader.offer(None, "cannot read it: No such file") is None
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2
    assert "route 'clf': targets: weights add up to 90, not 100" in errors[0]
    assert "No such file" in errors[1]
    assert metrics.reload_errors == 2
    routing = reloader.offer(V2)
    assert routing is not None and routing.routes["clf"].targets[0].version == "2"
    assert metrics.reloads == 1


def test_a_refused_file_fixed_back_to_the_applied_one_is_quiet() -> None:
    metrics = RoutingMetrics()
    reloader = Reloader("r.yaml", V1, metrics)
    assert reloader.offer(BAD) is None
    assert reloader.offer(V1) is None  # the routing in force is this one already
    assert reloader.offer(BAD) is None  # still refused, not counted again
    assert metrics.reload_errors == 1


def test_watcher_puts_a_valid_edit_in_force_and_keeps_it_through_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_mod, "RELOAD_INTERVAL_S", 0.01)
    path = tmp_path / "routing.yaml"
    path.write_bytes(V1)

    async def until(condition: object, timeout_s: float = 2.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():  # type: ignore[operator]
                await asyncio.sleep(0.01)

    async def main() -> None:
        router = Router(parse_routing(V1), HeldClient(), lambda: 0.0, 30.0)
        reloader = Reloader(str(path), V1, router.metrics)
        task = asyncio.create_task(watch(str(path), router, reloader))
        try:
            path.write_bytes(V2)
            await until(lambda: router.routes["clf"].targets == [("clf", "2")])
            path.write_bytes(BAD)
            await until(lambda: router.metrics.reload_errors == 1)
            path.unlink()
            await until(lambda: router.metrics.reload_errors == 2)
            assert router.routes["clf"].targets == [("clf", "2")]
            path.write_bytes(V1)
            await until(lambda: router.routes["clf"].targets == [("clf", "1")])
            assert router.metrics.reloads == 2
        finally:
            task.cancel()

    asyncio.run(main())
