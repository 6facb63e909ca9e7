"""Broker state belongs to the worker that announced it, is bounded, and no message makes the
broker answer much more than it was sent: fake-clock tests of the registry and dispatcher."""

from __future__ import annotations

import logging

import pytest

from broker import registry as registry_module
from broker.dispatcher import Dispatcher
from broker.registry import DEFAULT_LIMITS, AnnounceLimits
from fabric import errors
from fabric.protocol import (
    PROTOCOL_TAG,
    TYPE_FRAME,
    CatalogEntry,
    CatalogHeader,
    HeartbeatHeader,
    ModelAnnouncement,
    MsgType,
    PeerId,
)
from tests.broker.test_dispatcher import FE, FE2, INTERVAL_S, LIVENESS, W1, W2, W3, Harness

REAL = b"real-config"
EVIL = b"evil-config: 1 us timeout"
ATTACKER = b"attacker"


class BoundedHarness(Harness):
    def __init__(self, limits: AnnounceLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self.d = Dispatcher(
            max_queued=100,
            heartbeat_interval_s=INTERVAL_S,
            heartbeat_liveness=LIVENESS,
            clock=self.clocks.mono,
            wall_clock_ns=self.clocks.wall,
            limits=limits,
        )

    def ready(self, worker: PeerId, *models: tuple[str, str, bytes], capacity: int = 4) -> None:
        self.d.on_ready(
            worker, [ModelAnnouncement(name, ver, cfg, capacity) for name, ver, cfg in models]
        )

    def catalog(self) -> CatalogHeader:
        """The catalog a frontend with a stale generation is sent now."""
        self.clocks.advance(INTERVAL_S)
        self.d.to_frontends.clear()
        self.d.on_frontend_heartbeat(b"fe-probe", HeartbeatHeader(0))
        catalogs = [c for _, t, c in self.frontend_messages() if t is MsgType.CATALOG]
        assert len(catalogs) == 1
        assert isinstance(catalogs[0], CatalogHeader)
        return catalogs[0]

    def let_silent_worker_expire(self, victim: PeerId) -> None:
        self.kill_by_silence(victim)


@pytest.fixture
def h() -> BoundedHarness:
    return BoundedHarness()


# ---- state leaves with its peer ---------------------------------------------------------------


@pytest.mark.parametrize("departure", ["disconnect", "silence"])
def test_a_departed_workers_config_leaves_with_it(h: BoundedHarness, departure: str) -> None:
    h.ready(ATTACKER, ("simple", "1", EVIL))
    if departure == "disconnect":
        h.d.on_worker_disconnect(ATTACKER)
    else:
        h.ready(W1, ("other", "1", b"x"))
        h.let_silent_worker_expire(ATTACKER)
    assert h.d.registry.config("simple", "1") is None
    assert all(e.name != "simple" for e in h.catalog().models)
    # The real worker comes (back): its config is the one served.
    h.ready(W2, ("simple", "1", REAL))
    assert CatalogEntry("simple", "1", REAL, 1) in h.catalog().models


def test_a_conflicting_config_is_refused_for_that_worker_only(
    h: BoundedHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h.ready(W1, ("simple", "1", REAL), capacity=1)
    with caplog.at_level(logging.WARNING, logger="broker.registry"):
        for _ in range(5):  # the same conflict again and again: logged once
            h.ready(ATTACKER, ("simple", "1", EVIL), ("own", "1", b"own"))
    conflicts = [r for r in caplog.records if "config differs" in r.getMessage()]
    assert len(conflicts) == 1
    assert h.d.counters.conflicting_versions == 1
    catalog = h.catalog()
    assert CatalogEntry("simple", "1", REAL, 1) in catalog.models
    assert CatalogEntry("own", "1", b"own", 1) in catalog.models  # the rest of it applies
    # The attacker gets no traffic for it, even when the real worker has no credit left.
    first, second = h.request("simple", "1"), h.request("simple", "1")
    assert [(s.worker, s.header.request_id) for s in h.sent()] == [(W1, first)]
    h.reply(W1, first)
    assert [(s.worker, s.header.request_id) for s in h.sent()] == [(W1, second)]
    # It leaves: nothing of it stays; the real config never moved.
    h.d.on_worker_disconnect(ATTACKER)
    assert [(e.name, e.config, e.workers) for e in h.catalog().models] == [("simple", REAL, 1)]


def test_a_worker_alone_on_a_version_may_change_its_config(h: BoundedHarness) -> None:
    h.ready(W1, ("m", "1", b"old"))
    h.ready(W1, ("m", "1", b"new"))
    assert h.catalog().models == [CatalogEntry("m", "1", b"new", 1)]
    h.ready(W2, ("m", "1", b"new"))
    h.ready(W1, ("m", "1", b"newer"))  # W2 shares it now: refused for W1
    assert h.catalog().models == [CatalogEntry("m", "1", b"new", 1)]
    assert h.d.registry.servers(("m", "1"))[0].identity == W2


def test_the_next_live_announcer_takes_over_when_the_first_leaves(h: BoundedHarness) -> None:
    h.ready(W1, ("m", "1", b"v1-config"))
    h.ready(W2, ("m", "1", b"v1-config-edited"))  # refused while W1 serves it
    h.ready(W3, ("m", "1", b"third"))
    rid = h.request("m", "1")
    assert [s.worker for s in h.sent()] == [W1]
    h.d.on_worker_disconnect(W1)  # its request is requeued to whoever serves m:1 now
    assert [(s.worker, s.header.request_id) for s in h.sent()] == [(W2, rid)]
    assert h.catalog().models == [CatalogEntry("m", "1", b"v1-config-edited", 1)]


def test_a_departed_version_is_unavailable_not_unknown_and_the_memory_is_bounded(
    h: BoundedHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "DEPARTED_VERSIONS_REMEMBERED", 4)
    h.ready(W1, ("m", "1", b"c"))
    h.ready(W2, ("keep", "1", b"c"))
    h.d.on_worker_disconnect(W1)
    h.one_error(h.request("m", "1"), errors.UNAVAILABLE)
    h.one_error(h.request("m", ""), errors.UNAVAILABLE)
    for i in range(100):  # an attacker cycling version names
        h.ready(ATTACKER, (f"fake{i}", "1", b"c"))
    h.d.on_worker_disconnect(ATTACKER)
    assert len(h.d.registry._departed) == 4
    h.one_error(h.request("fake0", "1"), errors.NOT_FOUND)
    h.one_error(h.request("fake99", "1"), errors.UNAVAILABLE)


def test_an_identical_announcement_changes_nothing(h: BoundedHarness) -> None:
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(0))
    h.ready(W1, ("m", "1", b"c"))
    generation = h.d.registry.generation
    h.clocks.advance(INTERVAL_S)
    h.frontend_messages()
    for _ in range(100):
        h.ready(W1, ("m", "1", b"c"))
    assert h.d.registry.generation == generation
    assert h.frontend_messages() == []


# ---- bounds -----------------------------------------------------------------------------------


LIMITS = AnnounceLimits(max_models_per_peer=3, max_config_bytes=1000, max_catalog_bytes=2500)


@pytest.mark.parametrize(
    ("models", "why"),
    [
        ([(f"m{i}", "1", b"c") for i in range(4)], "more than 3 per worker"),
        ([("ok", "1", b"c"), ("big", "1", b"x" * 1000)], "more than 1000"),
        ([(f"m{i}", "1", b"x" * 900) for i in range(3)], "catalog would grow"),
    ],
)
def test_an_announcement_over_a_bound_is_refused_as_a_whole(
    models: list[tuple[str, str, bytes]], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = BoundedHarness(LIMITS)
    h.ready(W1, ("simple", "1", REAL))
    h.ready(W2, ("x", "1", b"x" * 900), ("y", "1", b"y" * 900))  # 1.9 kB of the 2.5 kB
    before = h.catalog()
    with caplog.at_level(logging.WARNING, logger="broker.registry"):
        h.ready(ATTACKER, *models)
    assert why in caplog.text
    assert h.d.counters.refused_announcements == 1
    after = h.catalog()
    assert after.models == before.models
    assert h.d.registry.catalog_bytes <= LIMITS.max_catalog_bytes
    # A worker whose new announcement is refused keeps serving what it had.
    h.ready(W2, *models)
    assert h.d.counters.refused_announcements == 2
    assert h.catalog().models == before.models
    rid = h.request("x", "1")
    assert [(s.worker, s.header.request_id) for s in h.sent()] == [(W2, rid)]


def test_catalog_bytes_follow_joins_leaves_and_changes() -> None:
    h = BoundedHarness(AnnounceLimits(max_catalog_bytes=4000))
    h.ready(W1, ("a", "1", b"x" * 900), ("b", "1", b"x" * 900))
    h.ready(W2, ("a", "1", b"x" * 900), ("c", "1", b"x" * 900))
    full = h.d.registry.catalog_bytes
    assert full == 3 * (900 + 2 + 16)
    h.ready(W3, ("d", "1", b"x" * 900), ("e", "1", b"x" * 900))  # would pass 4000
    assert h.d.counters.refused_announcements == 1
    h.d.on_worker_disconnect(W1)  # b leaves, a stays (W2 serves it)
    assert h.d.registry.catalog_bytes == full - 918
    h.ready(W3, ("d", "1", b"x" * 900), ("e", "1", b"x" * 900))  # fits now
    assert h.d.counters.refused_announcements == 1
    h.d.on_worker_disconnect(W2)
    h.d.on_worker_disconnect(W3)
    assert h.d.registry.catalog_bytes == 0


# ---- no amplification -------------------------------------------------------------------------


def test_a_burst_of_stale_heartbeats_gets_one_catalog(h: BoundedHarness) -> None:
    h.ready(W1, ("m", "1", b"c"))
    for _ in range(100_000 // 100):
        h.d.on_frontend_heartbeat(FE, HeartbeatHeader(12345))
    msgs = h.frontend_messages()
    assert [(fe, t) for fe, t, _ in msgs] == [(FE, MsgType.CATALOG)]
    h.clocks.advance(INTERVAL_S)
    for _ in range(1000):  # still stale an interval later: asked again, sent again, once
        h.d.on_frontend_heartbeat(FE, HeartbeatHeader(12345))
    assert [t for _, t, _ in h.frontend_messages()] == [MsgType.CATALOG]


def test_a_burst_of_current_heartbeats_gets_one_answer_per_half_interval(
    h: BoundedHarness,
) -> None:
    h.ready(W1, ("m", "1", b"c"))
    current = HeartbeatHeader(h.d.registry.generation)
    answers = 0
    for _ in range(40):  # 4 intervals, 10 heartbeats each
        for _ in range(100):
            h.d.on_frontend_heartbeat(FE, current)
        answers += len(h.frontend_messages())
        h.clocks.advance(INTERVAL_S / 10)
    assert answers == 8
    # A frontend heartbeating once per interval, as they do, is answered every time.
    for _ in range(5):
        h.clocks.advance(INTERVAL_S)
        h.d.on_frontend_heartbeat(FE2, current)
        assert [t for _, t, _ in h.frontend_messages()] == [MsgType.HEARTBEAT]


def test_catalog_changes_go_out_at_most_once_per_interval_after_a_burst(
    h: BoundedHarness,
) -> None:
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(0))
    assert [t for _, t, _ in h.frontend_messages()] == [MsgType.CATALOG]
    h.ready(W1, ("m0", "1", b"c"))  # a second change at once still goes out (burst of 2)
    assert [t for _, t, _ in h.frontend_messages()] == [MsgType.CATALOG]
    sent = 2
    for i in range(1, 400):  # a worker flapping its models for 4 intervals
        h.ready(W1, (f"m{i}", "1", b"c"))
        sent += len([t for _, t, _ in h.frontend_messages() if t is MsgType.CATALOG])
        h.clocks.advance(INTERVAL_S / 100)
        if i % 20 == 0:
            h.d.on_frontend_heartbeat(FE, HeartbeatHeader(h.d.registry.generation))  # alive
            h.d.tick()
            sent += len([t for _, t, _ in h.frontend_messages() if t is MsgType.CATALOG])
    assert sent <= 2 + 4  # the burst, then one per interval
    h.d.on_frontend_heartbeat(FE, HeartbeatHeader(h.d.registry.generation))
    h.clocks.advance(INTERVAL_S)
    h.d.tick()  # the last change is never lost
    msgs = [c for _, t, c in h.frontend_messages() if t is MsgType.CATALOG]
    assert len(msgs) == 1
    catalog = msgs[0]
    assert isinstance(catalog, CatalogHeader)
    assert catalog.generation == h.d.registry.generation
    assert [e.name for e in catalog.models] == ["m399"]
    h.d.tick()  # nothing more owed
    assert [t for _, t, _ in h.frontend_messages() if t is MsgType.CATALOG] == []


def test_one_catalog_encoding_serves_every_frontend(h: BoundedHarness) -> None:
    for fe in (FE, FE2, b"fe-3"):
        h.d.on_frontend_heartbeat(fe, HeartbeatHeader(0))
    h.d.to_frontends.clear()
    h.clocks.advance(INTERVAL_S)
    h.ready(W1, ("m", "1", b"c" * 10_000))
    frames = [f[2] for _, f in h.d.to_frontends if f[1] == TYPE_FRAME[MsgType.CATALOG]]
    assert len(frames) == 3
    assert frames[0] is frames[1] is frames[2]


def test_an_unknown_worker_is_told_to_announce_again_once_per_half_interval(
    h: BoundedHarness,
) -> None:
    for _ in range(10_000):
        assert not h.d.on_worker_seen(ATTACKER)
    told = h.worker_messages(MsgType.REANNOUNCE)
    assert [(w, f[0]) for w, f in told] == [(ATTACKER, PROTOCOL_TAG)]
    h.clocks.advance(INTERVAL_S / 2)
    h.d.on_worker_seen(ATTACKER)
    assert len(h.worker_messages(MsgType.REANNOUNCE)) == 1
    h.clocks.advance(INTERVAL_S * 2)
    h.d.tick()
    assert h.d.answers.told_to_leave == {}  # forgotten: memory bounded by recent peers


def test_a_ready_larger_than_the_catalog_may_be_is_refused_unread() -> None:
    h = BoundedHarness(LIMITS)
    h.ready(W1, ("simple", "1", REAL))
    before = h.catalog()
    assert h.d.ready_fits(W2, LIMITS.max_catalog_bytes)
    assert not h.d.ready_fits(ATTACKER, 25_000_000)
    assert h.d.counters.refused_announcements == 1
    assert h.catalog().models == before.models
    # Known now (empty), so its heartbeats are not answered with DISCONNECT.
    assert h.d.on_worker_seen(ATTACKER)
