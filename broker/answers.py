"""What the broker says to peers that did not send a request: heartbeat answers, catalogs and
REANNOUNCEs to unknown workers, each bounded so that no message (or BATCH of them) makes the
broker answer much more than it was sent.

* A frontend gets at most one heartbeat answer per half heartbeat interval, however many
  heartbeats it sends.
* A catalog goes to a frontend when it changed or when the frontend asks with a stale
  generation, at most once per heartbeat interval on average (a token bucket: a burst of
  ``CATALOG_BURST``, so that a worker's load-then-unload reaches frontends at once); a change
  past the budget is owed and goes out at a later tick. The catalog is encoded once per
  generation for all frontends.
* An unknown worker is told to announce again at most once per half interval.

No I/O: frames go to the dispatcher's outboxes; the clock is the dispatcher's.
"""

from __future__ import annotations

from fabric import messages
from fabric.protocol import HeartbeatHeader, PeerId, encode_header
from fabric.routes import RouteDecision

from .controls import Outbox
from .registry import Registry

_NEVER = -1e18
CATALOG_BURST = 2.0
"""Catalogs a frontend may get back to back; the budget refills one per heartbeat interval."""


class Answers:
    def __init__(
        self, registry: Registry, interval_s: float, to_workers: Outbox, to_frontends: Outbox
    ) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._to_workers = to_workers
        self._to_frontends = to_frontends
        self._answered_s: dict[PeerId, float] = {}  # last answer of any kind, per frontend
        self._catalog_sent: dict[PeerId, tuple[float, int]] = {}  # when, which generation
        self._catalog_budget: dict[PeerId, tuple[float, float]] = {}  # tokens, as of when
        self._catalog_due: set[PeerId] = set()  # owed a catalog the rate limit held back
        self._catalog_cache: tuple[int, bytes] = (0, b"")
        self.told_to_leave: dict[PeerId, float] = {}

    def heartbeat(
        self,
        frontend: PeerId,
        generation: int,
        now: float,
        decisions: list[RouteDecision] | None = None,
    ) -> None:
        """Answer a frontend's heartbeat, unless it was answered a moment ago: the catalog when
        its generation is stale (and the budget allows), else a heartbeat. ``decisions`` (on
        the routes it reported) go on a heartbeat even when the catalog went: a frontend that
        starts learns them from its first answer."""
        if now - self._answered_s.get(frontend, _NEVER) < self._interval_s / 2:
            return  # one answer covers a burst of heartbeats
        if (
            generation != self._registry.generation
            and self.offer_catalog(frontend, now)
            and not decisions
        ):
            return
        self._answered_s[frontend] = now
        reg = self._registry
        hb = HeartbeatHeader(reg.generation, reg.incarnation, decisions=decisions or [])
        self._to_frontends.append((frontend, messages.heartbeat(hb)))

    def offer_catalog(self, frontend: PeerId, now: float) -> bool:
        """Send the current catalog to ``frontend`` if its budget allows (else it is owed one);
        True when this call sent it."""
        generation = self._registry.generation
        tokens, as_of = self._catalog_budget.get(frontend, (CATALOG_BURST, now))
        tokens = min(CATALOG_BURST, tokens + (now - as_of) / self._interval_s)
        if tokens < 1.0:
            self._catalog_budget[frontend] = (tokens, now)
            self._catalog_due.add(frontend)
            return False
        self._catalog_budget[frontend] = (tokens - 1.0, now)
        self._catalog_due.discard(frontend)
        self._catalog_sent[frontend] = (now, generation)
        self._answered_s[frontend] = now
        self._to_frontends.append((frontend, messages.catalog(self._catalog_frame())))
        return True

    def reannounce_unknown(self, worker: PeerId, now: float) -> None:
        if now - self.told_to_leave.get(worker, _NEVER) >= self._interval_s / 2:
            self.told_to_leave[worker] = now
            self._to_workers.append((worker, messages.reannounce()))

    def tick(self, now: float) -> None:
        """Send the catalogs owed; forget unknown workers told to leave a while ago."""
        for fe in list(self._catalog_due):
            self.offer_catalog(fe, now)
        for peer in [p for p, t in self.told_to_leave.items() if now - t >= self._interval_s]:
            del self.told_to_leave[peer]

    def forget(self, frontend: PeerId) -> None:
        self._answered_s.pop(frontend, None)
        self._catalog_sent.pop(frontend, None)
        self._catalog_budget.pop(frontend, None)
        self._catalog_due.discard(frontend)

    def _catalog_frame(self) -> bytes:
        """The encoded catalog, built once per generation however many frontends get it."""
        generation, frame = self._catalog_cache
        if generation != self._registry.generation or not frame:
            frame = encode_header(self._registry.catalog())
            self._catalog_cache = (self._registry.generation, frame)
        return frame
