"""The routing hook of ``ModelInfer`` and ``ModelStreamInfer``: a call for a public name is
resolved to one target before the attempt loop, so every retry and hedge goes to that same
target (a call that failed on the canary is retried, if its status is retryable at all, on
the canary); its shadows are started; its outcome is counted per route and target.

Also answers, for the metadata RPCs, which target a public name stands for now."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from fabric import errors, tracing

from ..fabric_client import Reply
from ..streams import Infer
from ..traces import annotate_route, current_call_span
from ..wire import RequestRoute
from .config import RoutingFile
from .keys import Metadata, MetadataSource, sticky_key
from .metrics import RoutingMetrics, TargetCounters
from .shadow import Shadows, Submitter
from .table import BYPASS, DecisionSource, RouteState, RoutingTable

logger = logging.getLogger(__name__)

_CANCELLED = Reply(errors.CANCELLED, "the caller went away", None)
Models = Mapping[tuple[str, str], tuple[Any, int]]  # FabricClient.models(): -> (entry, workers)
_NONE = (None, 0)


class Router:
    def __init__(
        self,
        routing: RoutingFile,
        client: Submitter,
        load: Callable[[], float],
        default_timeout_s: float,
        decisions: DecisionSource | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = RoutingMetrics()
        self.table = RoutingTable(routing, decisions, draw)
        self.routes = self.table.routes  # public name -> state; replaced on reload
        self.shadows = Shadows(client, self.metrics, load)
        self._draw = draw
        self._default_timeout_s = default_timeout_s

    def load(self, routing: RoutingFile) -> None:
        self.table.load(routing)
        self.routes = self.table.routes
        self.refresh()

    def refresh(self) -> None:
        """Applies the brokers' latest decisions (called every watcher tick)."""
        before = {name: s.rolled_back for name, s in self.routes.items()}
        self.table.refresh()
        for name, state in self.routes.items():
            if state.rolled_back and not before.get(name, False):
                self.metrics.rolled_back(name, state.reason)

    def _bind_counters(self, state: RouteState) -> list[TargetCounters]:
        """The counters of ``state``'s targets, looked up once per route state."""
        state.counters = [self.metrics.target(state.name, m, v) for m, v in state.targets]
        return state.counters

    async def infer(
        self,
        infer: Infer,
        route: RequestRoute,
        payload: bytes,
        remaining_s: float | None,
        metadata: MetadataSource | None,
    ) -> Reply:
        """One call for a public name (``route.model`` is a key of ``routes``)."""
        state = self.routes[route.model]
        if route.version or state.sticky_header or state.sticky_parameter:
            key = None if route.version else sticky_key(state, payload, metadata)
            slot = self.table.resolve(state, route.version, key).slot
            if slot == BYPASS:  # a version no target has: it goes where it says, uncounted
                return await infer(route, payload, remaining_s)
        else:  # the common case, inline: a weighted draw
            slot = state.picker.pick(self._draw())
        counters = (state.counters or self._bind_counters(state))[slot]
        if route.id:
            model, version = state.targets[slot]
            target = RequestRoute(model, version, route.id)
        else:  # most clients send no id: one prepared route per target
            target = state.plain[slot]
        if tracing.ENABLED:  # the decision as an event of the call's span
            annotate_route(current_call_span(), route.model, f"{target.model}:{target.version}")
        primary: asyncio.Future[Reply] | None = None
        if state.shadows and not route.version:
            primary = asyncio.get_running_loop().create_future()
            timeout_s = remaining_s if remaining_s is not None else self._default_timeout_s
            self.shadows.start(state, payload, timeout_s, primary, self._draw)
        start = time.monotonic()
        reply = _CANCELLED
        try:
            reply = await infer(target, payload, remaining_s)
            return reply
        finally:
            self.metrics.observe(counters, reply.status, time.monotonic() - start)
            if primary is not None:
                primary.set_result(reply)

    # ---- the stream hook and the metadata RPCs --------------------------------------------
    def stream_infer(self, infer: Infer, metadata: Metadata | None) -> Infer:
        """``infer`` for the requests of one stream, whose metadata (sticky header) is the
        stream's."""

        async def routed(route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
            if route.model in self.routes:
                return await self.infer(infer, route, payload, remaining_s, lambda: metadata)
            return await infer(route, payload, remaining_s)

        return routed

    def answer_for(self, name: str, version: str) -> tuple[str, str]:
        """The model and version whose metadata, config or readiness answers for ``name``:
        a public name's current primary target, or the target holding ``version``."""
        state = self.routes.get(name)
        if state is None:
            return name, version
        if not version:
            return state.primary()
        i = state.by_version.get(version, BYPASS)
        return (state.targets[i][0], version) if i != BYPASS else (name, version)

    def ready(self, name: str, models: Models) -> bool:
        """A public name is ready while any target with weight is."""
        state = self.routes[name]
        return any(
            w > 0 and models.get(t, _NONE)[1] > 0
            for t, w in zip(state.targets, state.weights, strict=True)
        )

    def index(self, models: Models, ready_only: bool) -> list[tuple[str, bool]]:
        """(public name, ready) of the public names that are not also model names."""
        known = {m for m, _ in models}
        out = []
        for name in sorted(self.routes):
            if name in known:
                continue
            ready = self.ready(name, models)
            if ready or not ready_only:
                out.append((name, ready))
        return out
