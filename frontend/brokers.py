"""Which broker a request goes to: a pure choice over what this frontend knows of each one.

Only live brokers count (heard from within their liveness, ``fabric.heartbeat.Liveness``).
Among them, those whose catalog has a live worker for the model are preferred, so a request
is not sent to a broker that would queue it with no worker; the rest share the traffic in
turn. No I/O: the fabric client passes its links and a turn counter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol, TypeVar

from fabric.heartbeat import Liveness
from fabric.protocol import CatalogHeader


class BrokerView(Protocol):
    @property
    def liveness(self) -> Liveness: ...
    @property
    def catalog(self) -> CatalogHeader | None: ...


B = TypeVar("B", bound=BrokerView)


def choose_broker(brokers: Sequence[B], model: str, turn: int) -> B | None:
    """The broker for the next request for ``model`` (None: no broker is live); ``turn``
    rotates the choice among equally good brokers."""
    alive = [b for b in brokers if b.liveness.alive()]
    if len(alive) <= 1:
        return alive[0] if alive else None
    serving = [
        b
        for b in alive
        if b.catalog is not None
        and any(e.name == model and e.workers > 0 for e in b.catalog.models)
    ]
    pool = serving or alive
    return pool[turn % len(pool)]


def shm_models(catalog: CatalogHeader, domain: str) -> frozenset[str]:
    """Models all of whose versions are served only by workers in shared memory ``domain``."""
    if not domain:
        return frozenset()
    local = {e.name for e in catalog.models if e.shm_domain == domain}
    return frozenset(local - {e.name for e in catalog.models if e.shm_domain != domain})


class StartupGate:
    """Holds the calls that reach a fresh frontend before any broker has answered it.

    A replica starts taking calls (a balancer adds it as soon as its address resolves) a few
    milliseconds before its first broker's catalog arrives; without the gate those calls fail
    UNAVAILABLE "no broker is reachable". The gate opens on the first catalog, or for good
    ``wait_s`` after the start, so a frontend whose brokers never answer fails calls fast.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.open = False
        self._opened = asyncio.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(self.wait_s, self.release)

    def release(self) -> None:
        self.open = True
        self._opened.set()

    async def wait(self, limit_s: float | None) -> None:
        """Until the gate opens, at most ``limit_s`` (a call's time left, None for none)
        less a tenth, so that the call can still answer before its deadline."""
        limit = None if limit_s is None else max(0.0, limit_s * 0.9)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), limit)
