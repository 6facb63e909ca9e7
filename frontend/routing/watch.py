"""Watching the routing file: a valid edit is put in force within a second; an invalid one
(or a missing file) keeps the routing in force, is logged once and counted.

``Reloader`` decides what a read means (no I/O); ``watch`` is the loop that stats and reads
the file every ``RELOAD_INTERVAL_S`` in the event loop (a small local file: microseconds)
and applies the brokers' latest rollout and rollback decisions on the same tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

from .config import RoutingError, RoutingFile, parse_routing
from .metrics import RoutingMetrics
from .router import Router

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 0.5
FULL_READ_EVERY = 4  # ticks: read even when the stat looks the same (coarse mtimes)


class Reloader:
    """Turns each read of the file into a routing to put in force, or nothing."""

    def __init__(self, path: str, first: bytes, metrics: RoutingMetrics) -> None:
        self._path = path
        self._applied = hashlib.sha256(first).digest()
        self._refused = b""
        self._metrics = metrics

    def offer(self, content: bytes | None, problem: str = "") -> RoutingFile | None:
        """``content`` is what the file holds now, or None when it cannot be read (``problem``
        says why). Returns the routing to put in force, or None to keep the current one."""
        digest = hashlib.sha256(content if content is not None else problem.encode()).digest()
        if digest == self._applied or digest == self._refused:
            return None
        if content is not None:
            try:
                routing = parse_routing(content)
            except RoutingError as exc:
                problem = str(exc)
            else:
                self._applied, self._refused = digest, b""
                self._metrics.reloads += 1
                logger.info("routing: %s reloaded, %d route(s)", self._path, len(routing.routes))
                return routing
        self._refused = digest
        self._metrics.reload_errors += 1
        logger.error("routing: %s refused, the routing in force stays: %s", self._path, problem)
        return None


async def watch(path: str, router: Router, reloader: Reloader) -> None:
    """Runs until cancelled (the ``routing-watch`` task)."""
    file = Path(path)
    seen: tuple[int, int, int] | None = None
    tick = 0
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_S)
        tick += 1
        try:
            try:
                st = os.stat(file)
                stat = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stat != seen or tick % FULL_READ_EVERY == 0:
                    seen = stat
                    routing = reloader.offer(file.read_bytes())
                else:
                    routing = None
            except OSError as exc:
                seen = None
                routing = reloader.offer(None, f"cannot read it: {exc.strerror or exc}")
            if routing is not None:
                router.load(routing)
            router.refresh()
        except Exception:  # the watcher must outlive any one bad tick
            logger.exception("routing: watcher tick failed")
