"""Workers known to the broker: the model versions each serves, its credit, its liveness."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from fabric.heartbeat import Clock, Liveness
from fabric.protocol import CatalogEntry, CatalogHeader, ModelAnnouncement, PeerId

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (model name, version)


@dataclass
class WorkerState:
    identity: PeerId
    liveness: Liveness
    versions: dict[ModelKey, ModelAnnouncement] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)  # per model name
    in_flight: dict[str, int] = field(default_factory=dict)  # per model name

    def credit(self, model: str) -> int:
        return self.capacity.get(model, 0) - self.in_flight.get(model, 0)

    def load(self, model: str) -> float:
        cap = self.capacity.get(model, 0)
        return self.in_flight.get(model, 0) / cap if cap else 1.0


def _version_order(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class Registry:
    """Which live worker serves which model version, and the catalog frontends see."""

    def __init__(self, clock: Clock, interval_s: float, liveness: int) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._liveness = liveness
        self.workers: dict[PeerId, WorkerState] = {}
        self._configs: dict[ModelKey, bytes] = {}  # every version ever announced
        self.generation = random.randrange(1, 2**31)
        self.incarnation = random.randrange(1, 2**62)

    # ---- membership -------------------------------------------------------------
    def announce(self, identity: PeerId, models: Iterable[ModelAnnouncement]) -> WorkerState:
        worker = self.workers.get(identity)
        if worker is None:
            worker = WorkerState(identity, Liveness(self._interval_s, self._liveness, self._clock))
            self.workers[identity] = worker
            logger.info("worker %s joined", identity.hex())
        worker.liveness.seen()
        worker.versions = {}
        worker.capacity = {}
        for m in models:
            worker.versions[(m.name, m.version)] = m
            worker.capacity[m.name] = max(worker.capacity.get(m.name, 0), m.capacity)
            self._configs[(m.name, m.version)] = m.config
        for name in list(worker.in_flight):
            if name not in worker.capacity and worker.in_flight[name] == 0:
                del worker.in_flight[name]
        self.generation += 1
        logger.info(
            "worker %s serves %s",
            identity.hex(),
            ", ".join(f"{n}:{v}" for n, v in sorted(worker.versions)) or "nothing",
        )
        return worker

    def remove(self, identity: PeerId) -> WorkerState | None:
        worker = self.workers.pop(identity, None)
        if worker is not None:
            self.generation += 1
        return worker

    def expired(self) -> list[PeerId]:
        return [w.identity for w in self.workers.values() if not w.liveness.alive()]

    # ---- lookups ------------------------------------------------------------------
    def model_known(self, model: str) -> bool:
        return any(name == model for name, _ in self._configs)

    def version_known(self, model: str, version: str) -> bool:
        return (model, version) in self._configs

    def resolve_version(self, model: str, version: str) -> str | None:
        """The version a request means: as named, or the latest one some live worker serves."""
        if version:
            return version
        live = {v for w in self.workers.values() for (n, v) in w.versions if n == model}
        if not live:
            known = [v for (n, v) in self._configs if n == model]
            return max(known, key=_version_order) if known else None
        return max(live, key=_version_order)

    def queue_limit(self, key: ModelKey) -> int:
        """The model's own queue bound as its workers announced it; 0 when it has none."""
        limits = [w.versions[key].max_queued for w in self.workers.values() if key in w.versions]
        return max(limits, default=0) if all(limits) else 0

    def servers(self, key: ModelKey) -> list[WorkerState]:
        return [w for w in self.workers.values() if key in w.versions]

    def pick(self, key: ModelKey, avoid: PeerId | None = None) -> WorkerState | None:
        """Least-loaded live worker serving ``key`` that still has credit for the model."""
        best: WorkerState | None = None
        best_load = 2.0
        for w in self.workers.values():
            if key in w.versions and w.credit(key[0]) > 0 and w.identity != avoid:
                load = w.load(key[0])
                if load < best_load:
                    best, best_load = w, load
        return best

    def catalog(self) -> CatalogHeader:
        counts: dict[ModelKey, int] = dict.fromkeys(self._configs, 0)
        for w in self.workers.values():
            for key in w.versions:
                counts[key] += 1
        entries = [
            CatalogEntry(name, version, self._configs[(name, version)], n)
            for (name, version), n in sorted(counts.items())
        ]
        return CatalogHeader(self.generation, len(self.workers), entries, self.incarnation)
