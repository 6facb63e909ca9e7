"""The routing file (``--routing FILE``): YAML decoded into typed structs and checked, with
every error naming the route and the field.

```yaml
routes:
  clf:                                   # the public name clients call
    targets:                             # weights are percentages and add up to 100
      - {model: clf, version: "1", weight: 90}
      - {model: clf, version: "2", weight: 10}
    sticky: {header: x-routing-key}      # or {parameter: routing_key}
    shadow:
      - {model: clf_next, version: "1", fraction: 0.05, atol: 1.0e-4}
    rollout: {steps: [10, 25, 50, 100], dwell_s: 300}      # for the last target
    rollback: {window_s: 60, min_requests: 200, max_error_rate_delta: 0.02, max_p99_ratio: 2.0}
```
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NoReturn

import msgspec
import msgspec.yaml

from fabric import names
from fabric.routes import RouteSpec, TargetKey, canonical_digest

TOTAL_WEIGHT = 100  # weights and rollout steps are percentages of the route's traffic


class RoutingError(ValueError):
    """A routing file that cannot be used; the message names the route and the field."""


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    version: str
    weight: int = 0


class Sticky(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    header: str = ""  # gRPC metadata key (lower case, as gRPC delivers it)
    parameter: str = ""  # a ModelInferRequest parameter


class Shadow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    version: str
    fraction: float = 1.0
    atol: float = 0.0


class Rollout(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    steps: list[int]
    dwell_s: float


class Rollback(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    window_s: float = 60.0
    min_requests: int = 200
    max_error_rate_delta: float = 0.0  # 0 = this rule is off
    max_p99_ratio: float = 0.0  # 0 = this rule is off


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    targets: list[Target]
    sticky: Sticky | None = None
    shadow: list[Shadow] = []
    rollout: Rollout | None = None
    rollback: Rollback | None = None

    def digest(self) -> str:
        """Equal on every replica reading the same route, whatever the file's layout."""
        return canonical_digest(msgspec.to_builtins(self))

    def spec(self, name: str) -> RouteSpec:
        rollback = self.rollback or Rollback(window_s=0.0, min_requests=0)
        return RouteSpec(
            route=name,
            digest=self.digest(),
            targets=[TargetKey(t.model, t.version) for t in self.targets],
            weights=[t.weight for t in self.targets],
            rollout_steps=list(self.rollout.steps) if self.rollout else [],
            dwell_s=self.rollout.dwell_s if self.rollout else 0.0,
            window_s=rollback.window_s,
            min_requests=rollback.min_requests,
            max_error_rate_delta=rollback.max_error_rate_delta,
            max_p99_ratio=rollback.max_p99_ratio,
        )


class RoutingFile(msgspec.Struct, frozen=True):
    routes: dict[str, Route]

    def specs(self) -> list[RouteSpec]:
        return [route.spec(name) for name, route in sorted(self.routes.items())]


def parse_routing(data: bytes) -> RoutingFile:
    """The routing file in ``data``, checked; raises ``RoutingError``."""
    try:
        raw = msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise RoutingError(f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) != {"routes"}:
        raise RoutingError("the file must hold one key, 'routes'")
    entries = raw["routes"]
    if not isinstance(entries, dict):
        raise RoutingError("'routes' must map public names to routes")
    routes: dict[str, Route] = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not names.valid_model_name(name):
            raise RoutingError(f"route {name!r}: not a valid model name")
        try:
            route = msgspec.convert(entry, Route)
        except msgspec.ValidationError as exc:
            text = str(exc).replace("`$.", "`").replace("`$`", "the route")
            raise RoutingError(f"route {name!r}: {text}") from exc
        _check(name, route)
        routes[name] = route
    return RoutingFile(routes)


def _check(name: str, route: Route) -> None:
    def fail(field: str, problem: str) -> NoReturn:
        raise RoutingError(f"route {name!r}: {field}: {problem}")

    if not route.targets:
        fail("targets", "at least one target is needed")
    seen: set[tuple[str, str]] = set()
    for i, t in enumerate(route.targets):
        _check_model(fail, f"targets[{i}]", t.model, t.version)
        if (t.model, t.version) in seen:
            fail(f"targets[{i}]", f"{t.model}:{t.version} is listed twice")
        seen.add((t.model, t.version))
        if not 0 <= t.weight <= TOTAL_WEIGHT:
            fail(f"targets[{i}].weight", f"{t.weight} is not within 0..{TOTAL_WEIGHT}")
    total = sum(t.weight for t in route.targets)
    if total != TOTAL_WEIGHT:
        fail("targets", f"weights add up to {total}, not {TOTAL_WEIGHT}")
    if route.sticky is not None and bool(route.sticky.header) == bool(route.sticky.parameter):
        fail("sticky", "give exactly one of 'header' or 'parameter'")
    if route.sticky is not None and route.sticky.header != route.sticky.header.lower():
        fail("sticky.header", "gRPC metadata keys are lower case")
    for i, s in enumerate(route.shadow):
        _check_model(fail, f"shadow[{i}]", s.model, s.version)
        if not 0.0 < s.fraction <= 1.0:
            fail(f"shadow[{i}].fraction", f"{s.fraction} is not within (0, 1]")
        if s.atol < 0.0:
            fail(f"shadow[{i}].atol", "must not be negative")
    if route.rollout is not None or route.rollback is not None:
        if len(route.targets) < 2:
            fail("targets", "a rollout or rollback needs a stable target and a canary (the last)")
        if sum(t.weight for t in route.targets[:-1]) == 0:
            fail("targets", "the targets before the canary (the last) all have weight 0")
    if route.rollout is not None:
        steps = route.rollout.steps
        if not steps:
            fail("rollout.steps", "at least one step is needed")
        if any(not 0 < s <= TOTAL_WEIGHT for s in steps):
            fail("rollout.steps", f"each step is a weight within 1..{TOTAL_WEIGHT}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            fail("rollout.steps", "steps must increase")
        if route.rollout.dwell_s <= 0:
            fail("rollout.dwell_s", "must be positive")
    if route.rollback is not None:
        rb = route.rollback
        if rb.window_s <= 0:
            fail("rollback.window_s", "must be positive")
        if rb.min_requests < 1:
            fail("rollback.min_requests", "must be at least 1")
        if rb.max_error_rate_delta < 0 or rb.max_error_rate_delta > 1:
            fail("rollback.max_error_rate_delta", "must be within 0..1 (0 = off)")
        if rb.max_p99_ratio < 0 or 0 < rb.max_p99_ratio <= 1:
            fail("rollback.max_p99_ratio", "must be above 1 (0 = off)")
        if rb.max_error_rate_delta == 0 and rb.max_p99_ratio == 0:
            fail("rollback", "set max_error_rate_delta or max_p99_ratio (or leave rollback out)")


def _check_model(
    fail: Callable[[str, str], NoReturn], field: str, model: str, version: str
) -> None:
    if not names.valid_model_name(model):
        fail(f"{field}.model", f"{model!r} is not a valid model name")
    if not version or not names.valid_version(version):
        fail(f"{field}.version", f"{version!r} is not a valid version")
