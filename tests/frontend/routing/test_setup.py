"""Routing in a frontend process: no file, no router; a bad file stops the start, named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from frontend.config import FrontendConfig
from frontend.routing.config import RoutingError
from frontend.routing.router import Router
from frontend.routing.setup import RoutingSetup

from .test_shadow import HeldClient


@dataclasses.dataclass
class Service:
    in_flight: int = 0
    router: Router | None = None


def test_without_a_file_nothing_changes() -> None:
    service = Service()
    assert RoutingSetup.from_config(FrontendConfig(), HeldClient(), service) is None
    assert service.router is None


def test_a_bad_or_missing_file_stops_the_start_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("routes:\n  clf:\n    targets: [{model: clf, version: '1', weight: 90}]\n")
    with pytest.raises(RoutingError, match=r"routing.yaml: route 'clf': targets: weights add"):
        RoutingSetup.from_config(FrontendConfig(routing_file=str(bad)), HeldClient(), Service())
    with pytest.raises(RoutingError, match=r"missing.yaml: cannot read it"):
        RoutingSetup.from_config(
            FrontendConfig(routing_file=str(tmp_path / "missing.yaml")), HeldClient(), Service()
        )


def test_a_good_file_hangs_the_router_on_the_service(tmp_path: Path) -> None:
    good = tmp_path / "routing.yaml"
    good.write_text("routes:\n  clf:\n    targets: [{model: clf, version: '1', weight: 100}]\n")
    service = Service(in_flight=5)
    setup = RoutingSetup.from_config(
        FrontendConfig(routing_file=str(good), max_in_flight=10), HeldClient(), service
    )
    assert setup is not None and service.router is setup.router
    assert list(setup.router.routes) == ["clf"]
    assert setup.router.shadows._load() == 0.5  # the frontend's load, for dropping shadows
