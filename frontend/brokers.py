"""Which broker a request goes to: a pure choice over what this frontend knows of each one.

Only live brokers count (heard from within their liveness, ``fabric.heartbeat.Liveness``).
Among them, those whose catalog has a live worker for the model are preferred, so a request
is not sent to a broker that would queue it with no worker; the rest share the traffic in
turn. No I/O: the fabric client passes its links and a turn counter.
"""

from __future__ import annotations

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
