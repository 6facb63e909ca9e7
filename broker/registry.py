"""Workers known to the broker: the model versions each serves, its credit, its liveness, and
the catalog frontends see.

State belongs to the worker that announced it and leaves with it. A version's config is fixed
by its first live announcer: another worker announcing the same version with different config
bytes gets no traffic for it (logged once), and the first config stays. When the last worker
serving a version leaves or stops serving it, the version and its config leave the catalog.
Announcements are bounded (versions per worker, bytes per config, bytes of the whole catalog);
one over a bound is refused as a whole and the worker keeps what it announced before.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fabric.heartbeat import Clock, Liveness
from fabric.protocol import CatalogEntry, CatalogHeader, ModelAnnouncement, PeerId
from fabric.ratelog import RateLimitedLog

from .config import MAX_CATALOG_BYTES, MAX_CONFIG_BYTES, MAX_MODELS_PER_PEER

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (model name, version)

DEPARTED_VERSIONS_REMEMBERED = 1024
"""Versions whose last worker left, remembered by name only (no config, not in the catalog) so
that a request for one is UNAVAILABLE (retryable: a worker may bring it back), not NOT_FOUND."""
ENTRY_OVERHEAD_BYTES = 16
"""msgpack framing of one catalog entry (array header, string and int headers), rounded up."""


@dataclass(frozen=True)
class AnnounceLimits:
    max_models_per_peer: int = MAX_MODELS_PER_PEER
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_catalog_bytes: int = MAX_CATALOG_BYTES


DEFAULT_LIMITS = AnnounceLimits()


@dataclass
class WorkerState:
    identity: PeerId
    liveness: Liveness
    versions: dict[ModelKey, ModelAnnouncement] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)  # per model name
    in_flight: dict[str, int] = field(default_factory=dict)  # per model name
    # Announced but not served: another live worker fixed a different config for the version.
    conflicts: dict[ModelKey, ModelAnnouncement] = field(default_factory=dict)

    def credit(self, model: str) -> int:
        return self.capacity.get(model, 0) - self.in_flight.get(model, 0)

    def load(self, model: str) -> float:
        cap = self.capacity.get(model, 0)
        return self.in_flight.get(model, 0) / cap if cap else 1.0


@dataclass
class VersionEntry:
    """A version in the catalog: its config, fixed by its first live announcer, and the live
    workers serving it with that config."""

    config: bytes
    size: int  # bytes it adds to the catalog
    holders: set[PeerId]


@dataclass
class Announced:
    """What became of one announcement."""

    changed: bool  # the catalog changed (membership, versions or configs)
    refused: str = ""  # why the whole announcement was refused; "" when it was applied
    new_conflicts: list[ModelKey] = field(default_factory=list)


def _version_order(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def _set_capacity(worker: WorkerState) -> None:
    worker.capacity = {}
    for m in worker.versions.values():
        worker.capacity[m.name] = max(worker.capacity.get(m.name, 0), m.capacity)
    for name in list(worker.in_flight):
        if name not in worker.capacity and worker.in_flight[name] == 0:
            del worker.in_flight[name]


def _entry_size(m: ModelAnnouncement) -> int:
    names = len(m.name.encode()) + len(m.version.encode()) + len(m.shm_domain.encode())
    return len(m.config) + names + ENTRY_OVERHEAD_BYTES


class Registry:
    """Which live worker serves which model version, and the catalog frontends see."""

    def __init__(
        self,
        clock: Clock,
        interval_s: float,
        liveness: int,
        limits: AnnounceLimits = DEFAULT_LIMITS,
    ) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._liveness = liveness
        self.limits = limits
        self.workers: dict[PeerId, WorkerState] = {}
        self._versions: dict[ModelKey, VersionEntry] = {}
        # Versions no live worker serves any more -> True when the last one unloaded it (it left
        # the worker's own announcement), False when that worker died.
        self._departed: OrderedDict[ModelKey, bool] = OrderedDict()
        self.catalog_bytes = 0  # sum of the entries' sizes
        self.generation = random.randrange(1, 2**31)
        self.incarnation = random.randrange(1, 2**62)
        self._refusals = RateLimitedLog(logger, "refused announcements", clock=clock)

    # ---- membership -------------------------------------------------------------
    def announce(self, identity: PeerId, models: Iterable[ModelAnnouncement]) -> Announced:
        """Apply a worker's full model state, within the bounds and without overriding a
        config another live worker fixed."""
        announced = list(models)
        joined = identity not in self.workers
        worker = self._seen(identity)
        wanted = {(m.name, m.version): m for m in announced}
        refused = self._over_bounds(worker, announced, wanted)
        if refused:
            return self.refuse(identity, refused)
        accepted: dict[ModelKey, ModelAnnouncement] = {}
        conflicts: dict[ModelKey, ModelAnnouncement] = {}
        for key, m in wanted.items():
            entry = self._versions.get(key)
            if entry is not None and entry.config != m.config and entry.holders - {identity}:
                conflicts[key] = m
            else:
                accepted[key] = m
        changed = joined
        for key in worker.versions.keys() - accepted.keys():
            self._release(key, identity, unloaded=True)
            changed = True
        for key, m in accepted.items():
            changed = self._hold(key, m, identity) or changed
        worker.versions = accepted
        _set_capacity(worker)
        new_conflicts = sorted(conflicts.keys() - worker.conflicts.keys())
        worker.conflicts = conflicts
        for name, version in new_conflicts:
            self._refusals.warning(
                identity.hex(),
                "worker %s: model '%s' version '%s' refused: its config differs from the one "
                "the workers already serving it announced",
                identity.hex(),
                name,
                version,
            )
        if changed:
            self.generation += 1
            logger.info(
                "worker %s serves %s",
                identity.hex(),
                ", ".join(f"{n}:{v}" for n, v in sorted(accepted)) or "nothing",
            )
        return Announced(changed, "", new_conflicts)

    def refuse(self, identity: PeerId, why: str) -> Announced:
        """Refuse a whole announcement: the worker keeps what it announced before (nothing,
        when it is new: it is known, so its heartbeats are not answered with DISCONNECT)."""
        joined = identity not in self.workers
        self._seen(identity)
        self._refusals.warning(
            identity.hex(), "worker %s: announcement refused: %s", identity.hex(), why
        )
        if joined:
            self.generation += 1
        return Announced(joined, why)

    def _seen(self, identity: PeerId) -> WorkerState:
        worker = self.workers.get(identity)
        if worker is None:
            worker = WorkerState(identity, Liveness(self._interval_s, self._liveness, self._clock))
            self.workers[identity] = worker
            logger.info("worker %s joined", identity.hex())
        worker.liveness.seen()
        return worker

    def remove(self, identity: PeerId) -> WorkerState | None:
        worker = self.workers.pop(identity, None)
        if worker is not None:
            for key in worker.versions:
                self._release(key, identity)
            self.generation += 1
        return worker

    def expired(self) -> list[PeerId]:
        return [w.identity for w in self.workers.values() if not w.liveness.alive()]

    def flush_logs(self) -> None:
        self._refusals.flush()

    def _over_bounds(
        self,
        worker: WorkerState,
        announced: list[ModelAnnouncement],
        wanted: dict[ModelKey, ModelAnnouncement],
    ) -> str:
        """Why the announcement breaks a bound; "" when it does not."""
        limits = self.limits
        if len(announced) > limits.max_models_per_peer:
            return (
                f"{len(announced)} model versions, more than {limits.max_models_per_peer} "
                "per worker"
            )
        grown = 0
        for key, m in wanted.items():
            size = _entry_size(m)
            if size > limits.max_config_bytes:
                return (
                    f"model '{m.name}' version '{m.version}' has a {size}-byte config, more "
                    f"than {limits.max_config_bytes}"
                )
            entry = self._versions.get(key)
            if entry is None:
                grown += size
            elif entry.holders <= {worker.identity}:  # its own version: it may change
                grown += size - entry.size
        for key in worker.versions.keys() - wanted.keys():
            entry = self._versions[key]
            if entry.holders == {worker.identity}:
                grown -= entry.size
        if self.catalog_bytes + grown > limits.max_catalog_bytes:
            return (
                f"the catalog would grow to {self.catalog_bytes + grown} bytes, more than "
                f"{limits.max_catalog_bytes}"
            )
        return ""

    def _hold(self, key: ModelKey, m: ModelAnnouncement, identity: PeerId) -> bool:
        """``identity`` serves ``key`` with config ``m.config``; True when the catalog changed."""
        entry = self._versions.get(key)
        if entry is None:
            size = _entry_size(m)
            self._versions[key] = VersionEntry(m.config, size, {identity})
            self.catalog_bytes += size
            self._departed.pop(key, None)
            return True
        if entry.config != m.config:  # only when it is the sole holder (others conflict)
            size = _entry_size(m)
            self.catalog_bytes += size - entry.size
            entry.config, entry.size = m.config, size
            return True
        if identity in entry.holders:
            return False
        entry.holders.add(identity)
        return True

    def _release(self, key: ModelKey, identity: PeerId, unloaded: bool = False) -> None:
        entry = self._versions.get(key)
        if entry is None:
            return
        entry.holders.discard(identity)
        if entry.holders:
            return
        del self._versions[key]
        self.catalog_bytes -= entry.size
        if self._promote(key, identity):
            return
        self._departed[key] = unloaded
        self._departed.move_to_end(key)
        while len(self._departed) > DEPARTED_VERSIONS_REMEMBERED:
            self._departed.popitem(last=False)

    def _promote(self, key: ModelKey, leaving: PeerId) -> bool:
        """The last holder of ``key`` left: the longest-connected live worker refused for it
        (a different config) now fixes its config; True when one did."""
        for w in self.workers.values():
            m = w.conflicts.get(key)
            if w.identity == leaving or m is None:
                continue
            entry = self._versions.get(key)
            if entry is not None and entry.config != m.config:
                continue  # still conflicts with the worker promoted before it
            grown = _entry_size(m) if entry is None else 0
            if self.catalog_bytes + grown > self.limits.max_catalog_bytes:
                continue
            del w.conflicts[key]
            self._hold(key, m, w.identity)
            w.versions[key] = m
            _set_capacity(w)
            logger.info("worker %s now serves %s:%s", w.identity.hex(), *key)
        return key in self._versions

    # ---- lookups ------------------------------------------------------------------
    def version_known(self, model: str, version: str) -> bool:
        return (model, version) in self._versions or (model, version) in self._departed

    def unloaded(self, model: str, version: str) -> bool:
        """No worker serves this version because the last one unloaded it (not because it died)."""
        return self._departed.get((model, version), False)

    def config(self, model: str, version: str) -> bytes | None:
        entry = self._versions.get((model, version))
        return entry.config if entry is not None else None

    def resolve_version(self, model: str, version: str) -> str | None:
        """The version a request means: as named, or the latest one some live worker serves."""
        if version:
            return version
        live = [v for (n, v) in self._versions if n == model]
        if not live:
            known = [v for (n, v) in self._departed if n == model]
            return max(known, key=_version_order) if known else None
        return max(live, key=_version_order)

    def queue_limit(self, key: ModelKey) -> int:
        """The model's own queue bound as its workers announced it; 0 when it has none."""
        limits = [w.versions[key].max_queued for w in self.workers.values() if key in w.versions]
        return max(limits, default=0) if all(limits) else 0

    def _shm_domain(self, key: ModelKey, entry: VersionEntry) -> str:
        """The shared memory domain every holder of ``key`` is in, "" when none or mixed: a
        frontend in it may send that version's payloads through shared memory."""
        domains = set()
        for holder in entry.holders:
            worker = self.workers.get(holder)
            announced = worker.versions.get(key) if worker is not None else None
            domains.add(announced.shm_domain if announced is not None else "")
        return domains.pop() if len(domains) == 1 else ""

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
        entries = [
            CatalogEntry(*key, entry.config, len(entry.holders), self._shm_domain(key, entry))
            for key, entry in sorted(self._versions.items())
        ]
        return CatalogHeader(self.generation, len(self.workers), entries, self.incarnation)
