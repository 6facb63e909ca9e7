"""The routing file: the issue's example works as written; every refusal names the route and
the field; the digest and the reported spec."""

from __future__ import annotations

import pytest

from fabric.routes import RouteSpec, TargetKey
from frontend.routing.config import RoutingError, parse_routing

EXAMPLE = b"""
routes:
  clf:                                   # the public name clients call
    targets:
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
    sticky: {header: x-routing-key}
    shadow:
      - {model: clf_next, version: "1", fraction: 0.05, atol: 1.0e-4}
    rollout: {steps: [10, 25, 50, 100], dwell_s: 300}
    rollback: {window_s: 60, min_requests: 200, max_error_rate_delta: 0.02, max_p99_ratio: 2.0}
"""


def test_the_issue_example_parses() -> None:
    routing = parse_routing(EXAMPLE)
    route = routing.routes["clf"]
    assert [(t.model, t.version, t.weight) for t in route.targets] == [
        ("clf", "1", 90),
        ("clf", "2", 10),
    ]
    assert route.sticky is not None and route.sticky.header == "x-routing-key"
    assert route.shadow[0].fraction == 0.05 and route.shadow[0].atol == 1e-4
    assert route.rollout is not None and route.rollout.steps == [10, 25, 50, 100]
    assert route.rollback is not None and route.rollback.max_p99_ratio == 2.0


def test_spec_reports_the_route_as_the_broker_needs_it() -> None:
    routing = parse_routing(EXAMPLE)
    (spec,) = routing.specs()
    assert spec == RouteSpec(
        route="clf",
        digest=routing.routes["clf"].digest(),
        targets=[TargetKey("clf", "1"), TargetKey("clf", "2")],
        weights=[90, 10],
        rollout_steps=[10, 25, 50, 100],
        dwell_s=300.0,
        window_s=60.0,
        min_requests=200,
        max_error_rate_delta=0.02,
        max_p99_ratio=2.0,
    )


def test_spec_without_rollout_or_rollback_turns_the_rules_off() -> None:
    routing = parse_routing(b"routes: {ab: {targets: [{model: a, version: '1', weight: 100}]}}")
    (spec,) = routing.specs()
    assert spec.rollout_steps == [] and spec.dwell_s == 0.0
    assert spec.max_error_rate_delta == 0.0 and spec.max_p99_ratio == 0.0


def test_digest_ignores_layout_and_comments_but_not_content() -> None:
    flat = b"""routes:
  clf: {targets: [{model: clf, version: "1", weight: 90}, {model: clf, version: "2", weight: 10}],
        sticky: {header: x-routing-key},
        shadow: [{model: clf_next, version: "1", fraction: 0.05, atol: 1.0e-4}],
        rollout: {dwell_s: 300, steps: [10, 25, 50, 100]},
        rollback: {max_p99_ratio: 2.0, window_s: 60, min_requests: 200,
                   max_error_rate_delta: 0.02}}
"""
    a = parse_routing(EXAMPLE).routes["clf"].digest()
    assert parse_routing(flat).routes["clf"].digest() == a
    edited = EXAMPLE.replace(b"dwell_s: 300", b"dwell_s: 301")
    assert parse_routing(edited).routes["clf"].digest() != a


def _route(body: str) -> bytes:
    return f"routes:\n  clf:\n{body}".encode()


TWO = """    targets:
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"routes: [1, 2]", "'routes' must map"),
        (b"route: {}", "one key, 'routes'"),
        (b"routes: {clf: {targets: [}", "not valid YAML"),
        (
            _route("    targets:\n      - {model: clf, version: 1, weight: 100}\n"),
            "route 'clf': Expected `str`, got `int` - at `targets[0].version`",
        ),
        (
            _route("    targets:\n      - {model: clf, version: '1', weight: 100, w: 1}\n"),
            "route 'clf': Object contains unknown field `w` - at `targets[0]`",
        ),
        (_route("    targets: []\n"), "route 'clf': targets: at least one target"),
        (
            _route("    targets:\n      - {model: clf, version: '1', weight: 90}\n"),
            "route 'clf': targets: weights add up to 90, not 100",
        ),
        (
            _route("    targets:\n      - {model: clf, version: '1', weight: 120}\n"),
            "route 'clf': targets[0].weight: 120 is not within 0..100",
        ),
        (
            _route("    targets:\n      - {model: 'a/b', version: '1', weight: 100}\n"),
            "route 'clf': targets[0].model: 'a/b' is not a valid model name",
        ),
        (
            _route("    targets:\n      - {model: clf, version: '', weight: 100}\n"),
            "route 'clf': targets[0].version: '' is not a valid version",
        ),
        (
            _route(TWO.replace('"2"', '"1"')),
            "route 'clf': targets[1]: clf:1 is listed twice",
        ),
        (
            _route(TWO + "    sticky: {header: a, parameter: b}\n"),
            "route 'clf': sticky: give exactly one",
        ),
        (
            _route(TWO + "    sticky: {header: X-Key}\n"),
            "route 'clf': sticky.header: gRPC metadata keys are lower case",
        ),
        (
            _route(TWO + "    shadow: [{model: n, version: '1', fraction: 1.5}]\n"),
            "route 'clf': shadow[0].fraction: 1.5 is not within (0, 1]",
        ),
        (
            _route(TWO + "    shadow: [{model: n, version: '1', atol: -1}]\n"),
            "route 'clf': shadow[0].atol: must not be negative",
        ),
        (
            _route(TWO + "    rollout: {steps: [10, 10], dwell_s: 1}\n"),
            "route 'clf': rollout.steps: steps must increase",
        ),
        (
            _route(TWO + "    rollout: {steps: [10, 101], dwell_s: 1}\n"),
            "route 'clf': rollout.steps: each step is a weight within 1..100",
        ),
        (
            _route(TWO + "    rollout: {steps: [10], dwell_s: 0}\n"),
            "route 'clf': rollout.dwell_s: must be positive",
        ),
        (
            _route(TWO + "    rollout: {steps: [10]}\n"),
            "route 'clf': Object missing required field `dwell_s` - at `rollout`",
        ),
        (
            _route(TWO + "    rollback: {max_p99_ratio: 0.5}\n"),
            "route 'clf': rollback.max_p99_ratio: must be above 1",
        ),
        (
            _route(TWO + "    rollback: {window_s: 10}\n"),
            "route 'clf': rollback: set max_error_rate_delta or max_p99_ratio",
        ),
        (
            _route(TWO + "    rollback: {min_requests: 0, max_p99_ratio: 2}\n"),
            "route 'clf': rollback.min_requests: must be at least 1",
        ),
        (
            _route(
                "    targets:\n      - {model: clf, version: '1', weight: 100}\n"
                "    rollout: {steps: [10], dwell_s: 1}\n"
            ),
            "route 'clf': targets: a rollout or rollback needs a stable target and a canary",
        ),
        (
            _route(
                "    targets:\n      - {model: clf, version: '1', weight: 0}\n"
                "      - {model: clf, version: '2', weight: 100}\n"
                "    rollout: {steps: [10], dwell_s: 1}\n"
            ),
            "route 'clf': targets: the targets before the canary (the last) all have weight 0",
        ),
        (b"routes: {'a/b': {targets: []}}", "route 'a/b': not a valid model name"),
    ],
)
def test_refusals_name_the_route_and_field(text: bytes, expected: str) -> None:
    with pytest.raises(RoutingError) as info:
        parse_routing(text)
    assert expected in str(info.value)
