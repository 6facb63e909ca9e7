"""The routes in force: resolution, explicit versions, the broker's decisions applied."""

from __future__ import annotations

from dataclasses import dataclass, field

from fabric.routes import RouteDecision, RouteSpec
from frontend.routing.config import parse_routing
from frontend.routing.table import BYPASS, RoutingTable

FILE = b"""
routes:
  clf:
    targets:
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
    rollout: {steps: [10, 50, 100], dwell_s: 5}
    rollback: {window_s: 10, min_requests: 20, max_error_rate_delta: 0.02}
  pair:
    targets:
      - {model: alpha, version: "3", weight: 50}
      - {model: beta, version: "1", weight: 50}
"""


@dataclass
class FakeDecisions:
    """Stands in for ``frontend.route_state.RouteStates``."""

    reported: list[list[RouteSpec]] = field(default_factory=list)
    decisions: dict[tuple[str, str], RouteDecision] = field(default_factory=dict)

    def report(self, specs: list[RouteSpec]) -> None:
        self.reported.append(specs)

    def decision(self, route: str, digest: str) -> RouteDecision | None:
        return self.decisions.get((route, digest))


def test_a_rollout_starts_at_its_first_step_before_any_decision() -> None:
    table = RoutingTable(parse_routing(FILE), FakeDecisions())
    clf = table.routes["clf"]
    assert clf.weights == [90.0, 10.0] and clf.step == 0
    assert table.routes["pair"].weights == [50.0, 50.0] and table.routes["pair"].step == -1


def test_resolution_by_draw_and_by_key() -> None:
    draws = iter([0.0, 0.95])
    table = RoutingTable(parse_routing(FILE), draw=lambda: next(draws))
    clf = table.routes["clf"]
    assert table.resolve(clf, "", None) == ("clf", "1", 0)
    assert table.resolve(clf, "", None) == ("clf", "2", 1)
    pair = table.routes["pair"]
    first = table.resolve(pair, "", b"user-7")
    assert all(table.resolve(pair, "", b"user-7") == first for _ in range(20))


def test_an_explicit_version_bypasses_the_split() -> None:
    table = RoutingTable(parse_routing(FILE), draw=lambda: 0.0)
    clf, pair = table.routes["clf"], table.routes["pair"]
    assert table.resolve(clf, "2", b"key") == ("clf", "2", 1)
    assert table.resolve(clf, "7", None) == ("clf", "7", BYPASS)
    # A new public name: the version picks the target that has it.
    assert table.resolve(pair, "1", None) == ("beta", "1", 1)
    assert table.resolve(pair, "3", None) == ("alpha", "3", 0)


def test_decisions_set_the_canary_weight_and_report_rollbacks() -> None:
    decisions = FakeDecisions()
    table = RoutingTable(parse_routing(FILE), decisions)
    (specs,) = decisions.reported
    assert [s.route for s in specs] == ["clf", "pair"]
    clf = table.routes["clf"]
    decisions.decisions[("clf", clf.digest)] = RouteDecision("clf", clf.digest, 1, 50, False, "")
    assert table.refresh() == [clf]
    assert clf.weights == [50.0, 50.0] and clf.step == 1
    assert table.refresh() == []  # nothing new
    decisions.decisions[("clf", clf.digest)] = RouteDecision(
        "clf", clf.digest, 1, 0, True, "error rate 0.2 > 0.0 + 0.02"
    )
    assert table.refresh() == [clf]
    assert clf.weights == [100.0, 0.0] and clf.rolled_back
    assert clf.reason == "error rate 0.2 > 0.0 + 0.02"
    assert clf.primary() == ("clf", "1")
    assert all(table.resolve(clf, "", None).slot == 0 for _ in range(50))


def test_a_decision_for_another_digest_is_ignored() -> None:
    decisions = FakeDecisions()
    table = RoutingTable(parse_routing(FILE), decisions)
    decisions.decisions[("clf", "stale")] = RouteDecision("clf", "stale", 2, 100, False, "")
    table.refresh()
    assert table.routes["clf"].weights == [90.0, 10.0]


def test_reload_keeps_unchanged_routes_and_rebuilds_edited_ones() -> None:
    decisions = FakeDecisions()
    table = RoutingTable(parse_routing(FILE), decisions)
    clf, pair = table.routes["clf"], table.routes["pair"]
    edited = FILE.replace(b'"3", weight: 50', b'"3", weight: 20').replace(
        b'beta, version: "1", weight: 50', b'beta, version: "1", weight: 80'
    )
    table.load(parse_routing(edited))
    assert table.routes["clf"] is clf
    assert table.routes["pair"] is not pair
    assert table.routes["pair"].weights == [20.0, 80.0]
    assert len(decisions.reported) == 2


def test_primary_is_the_heaviest_target() -> None:
    table = RoutingTable(parse_routing(FILE))
    assert table.routes["clf"].primary() == ("clf", "1")
    assert table.routes["pair"].primary() == ("alpha", "3")  # the first of equals


def test_a_decision_that_leaves_no_target_is_not_applied() -> None:
    text = b"""
routes:
  solo:
    targets:
      - {model: a, version: "1", weight: 0}
      - {model: b, version: "1", weight: 100}
"""
    decisions = FakeDecisions()
    table = RoutingTable(parse_routing(text), decisions)
    solo = table.routes["solo"]
    decision = RouteDecision("solo", solo.digest, -1, 0, True, "x")
    decisions.decisions[("solo", solo.digest)] = decision
    assert table.refresh() == []
    assert solo.weights == [0.0, 100.0]
    assert table.resolve(solo, "", None).slot == 1
