"""Routing's place in a frontend process: reads and checks the file at start (a bad file stops
the start), hangs the router on the inference service, runs the watcher task, and gives the
metrics collector and the shutdown step."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Protocol

from ..config import FrontendConfig
from .config import RoutingError, parse_routing
from .metrics import RoutingCollector
from .router import Router
from .shadow import Submitter
from .table import DecisionSource
from .watch import Reloader, watch


class Routed(Protocol):
    """What routing needs of the inference service: its load, and a place for the router."""

    in_flight: int
    router: Router | None


class RoutingSetup:
    def __init__(self, path: str, router: Router, reloader: Reloader) -> None:
        self.path = path
        self.router = router
        self._reloader = reloader
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls,
        config: FrontendConfig,
        client: Submitter,
        service: Routed,
        decisions: DecisionSource | None = None,
    ) -> RoutingSetup | None:
        """None without ``--routing``; raises ``RoutingError`` naming the file when it
        cannot be read or is not a valid routing file."""
        path = config.routing_file
        if not path:
            return None
        try:
            content = Path(path).read_bytes()
        except OSError as exc:
            raise RoutingError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
        try:
            routing = parse_routing(content)
        except RoutingError as exc:
            raise RoutingError(f"{path}: {exc}") from exc
        budget = max(1, config.max_in_flight)
        router = Router(
            routing,
            client,
            lambda: service.in_flight / budget,
            config.default_timeout_s,
            decisions,
        )
        service.router = router
        return cls(path, router, Reloader(path, content, router.metrics))

    def start(self) -> None:
        self._task = asyncio.create_task(
            watch(self.path, self.router, self._reloader), name="routing-watch"
        )

    def collector(self) -> RoutingCollector:
        router = self.router
        return RoutingCollector(router.metrics, lambda: router.routes)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.router.shadows.close()
