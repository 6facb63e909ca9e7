"""Which broker a request goes to: a pure choice over what this frontend knows of each one.

Only live brokers count (heard from within their liveness, ``fabric.heartbeat.Liveness``).
Among them, those whose catalog has a live worker for the model are preferred, so a request
is not sent to a broker that would queue it with no worker; the rest share the traffic in
turn. No I/O: the fabric client passes its links and a turn counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol, TypeVar

from fabric.heartbeat import Liveness
from fabric.protocol import CatalogHeader

logger = logging.getLogger(__name__)


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


def serving(broker: BrokerView) -> bool:
    """``broker`` is live and its catalog lists a connected worker."""
    catalog = broker.catalog
    return catalog is not None and catalog.workers > 0 and broker.liveness.alive()


def shm_models(catalog: CatalogHeader, domain: str) -> frozenset[str]:
    """Models all of whose versions are served only by workers in shared memory ``domain``."""
    if not domain:
        return frozenset()
    local = {e.name for e in catalog.models if e.shm_domain == domain}
    return frozenset(local - {e.name for e in catalog.models if e.shm_domain != domain})


class BrokerGate:
    """Holds the calls that reach this frontend while no worker is reachable: no live broker
    lists a connected worker in its catalog. That is the time before its first broker has
    answered (a balancer adds a replica as soon as its address resolves), after every broker
    went silent or restarted, and after a restarted broker answered but before its workers
    joined it again, or while the last worker is being restarted. Without it those calls fail
    UNAVAILABLE ("no broker is reachable", "no worker is connected") at once, faster than any
    retry backoff.

    A call waits at most nine tenths of its time left. Once the gate has been shut for
    ``wait_s`` it gives up, and calls fail at once again until a worker is reachable, so a
    frontend whose brokers or workers stay away does not hold every call for long.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.open = False  # calls go straight on: a worker is reachable, or waiting gave up
        self.up = False  # a live broker lists a connected worker
        self._opened = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self.wait_s, self._give_up)

    def check(self, brokers: Sequence[BrokerView]) -> None:
        """Open the gate when one of ``brokers`` is live and lists a connected worker; shut it
        when none does any more. Called on every catalog, heartbeat tick and failed send."""
        if any(serving(b) for b in brokers):
            if not self.up:
                self.worker_up()
        elif self.up:
            self.workers_down()

    def worker_up(self) -> None:
        self.up = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.open = True
        self._opened.set()

    def workers_down(self) -> None:
        """No worker is reachable any more: shut the gate (unless it is shut or gave up
        already)."""
        if not self.up or self._loop is None:
            return
        self.up = False
        self.open = False
        self._opened.clear()
        self._timer = self._loop.call_later(self.wait_s, self._give_up)
        logger.info(
            "no live broker lists a worker: calls wait for one, up to %.1f s from now",
            self.wait_s,
        )

    def _give_up(self) -> None:
        wait = self.wait_s
        if self._loop is not None and not self.up:
            logger.warning(
                "no worker reachable for %.1f s: calls fail at once until one is back", wait
            )
        self._timer = None
        self.open = True
        self._opened.set()

    async def wait(self, limit_s: float | None) -> None:
        """Until the gate opens, at most ``limit_s`` (a call's time left, None for none)
        less a tenth, so that the call can still answer before its deadline."""
        limit = None if limit_s is None else max(0.0, limit_s * 0.9)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), limit)
