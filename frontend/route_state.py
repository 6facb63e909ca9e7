"""The rollout and rollback decisions this frontend follows, merged across its live brokers.

The routing layer calls ``report`` with the routes it holds (on load and on every reload);
the fabric client sends them to every broker on each heartbeat (and at once when they
change), together with the decisions held on them, and passes each broker's answer to
``update``. ``decision`` is what the pick follows: the most conservative of what the live
brokers say (rolled back if any says so, else the lowest rollout step), None while no broker
has spoken on that digest yet (``fabric.routes.initial_decision`` is the default then). A
rollback stays for the digest's life, and a decision stays while no live broker has one (a
broker restarted): the brokers adopt both from the decisions this frontend sends back.

No I/O and no clock: the fabric client says when a broker is lost. ``decision`` is a dict
lookup (merging happens when an answer arrives), so the hot path pays nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from fabric.routes import RouteDecision, RouteSpec, merge_decisions

logger = logging.getLogger(__name__)

DecisionKey = tuple[str, str]  # (route, digest)


class RouteStates:
    def __init__(self) -> None:
        self.specs: list[RouteSpec] = []
        self.version = 0  # bumps whenever a merged decision changes
        self._by_broker: dict[str, dict[DecisionKey, RouteDecision]] = {}
        self._merged: dict[DecisionKey, RouteDecision] = {}
        self._on_report: Callable[[], None] | None = None

    def report(self, specs: list[RouteSpec]) -> None:
        """The routes this frontend holds now (replacing those reported before). Call it on
        the event loop's thread (the fabric client sends at once, on its sockets)."""
        changed = [(s.route, s.digest) for s in specs] != [(s.route, s.digest) for s in self.specs]
        self.specs = list(specs)
        self._merge()
        if changed and self._on_report is not None:
            self._on_report()

    def on_report(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when the reported routes change (the fabric client sends them)."""
        self._on_report = callback

    def decision(self, route: str, digest: str) -> RouteDecision | None:
        return self._merged.get((route, digest))

    def held(self) -> list[RouteDecision]:
        """The merged decisions on the reported routes (sent back to the brokers: a broker
        that restarted starts from them instead of from scratch)."""
        return list(self._merged.values())

    def update(self, broker: str, decisions: Sequence[RouteDecision]) -> None:
        """What ``broker`` decided on the routes this frontend reported."""
        self._by_broker[broker] = {(d.route, d.digest): d for d in decisions}
        self._merge()

    def broker_lost(self, broker: str) -> None:
        """``broker`` went silent or restarted: its decisions no longer count."""
        if self._by_broker.pop(broker, None) is not None:
            self._merge()

    def _merge(self) -> None:
        merged: dict[DecisionKey, RouteDecision] = {}
        for spec in self.specs:
            key = (spec.route, spec.digest)
            found = merge_decisions([d[key] for d in self._by_broker.values() if key in d])
            before = self._merged.get(key)
            if before is not None and (
                found is None or (before.rolled_back and not found.rolled_back)
            ):
                # No live broker has spoken (one restarted), or the one that rolled the canary
                # back is gone: keep what was decided; the brokers learn it from our heartbeats.
                found = before
            if found is not None:
                merged[key] = found
        if merged != self._merged:
            for key, now in merged.items():
                before = self._merged.get(key)
                if before is None or (before.step, before.rolled_back) != (
                    now.step,
                    now.rolled_back,
                ):
                    logger.info(
                        "route %s: step %d, canary weight %d%s",
                        now.route,
                        now.step,
                        now.canary_weight,
                        f", rolled back ({now.reason})" if now.rolled_back else "",
                    )
            self._merged = merged
            self.version += 1
