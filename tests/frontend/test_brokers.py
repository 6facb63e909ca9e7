"""Broker choice with a fake clock: live brokers only, those with a worker for the model first,
in turn among equals."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fabric.heartbeat import Liveness
from fabric.protocol import CatalogEntry, CatalogHeader
from frontend.brokers import BrokerGate, choose_broker

INTERVAL_S = 1.0
LIVENESS = 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Broker:
    name: str
    liveness: Liveness
    catalog: CatalogHeader | None = None


def broker(name: str, clock: Clock, serves: dict[str, int] | None = None) -> Broker:
    live = Liveness(INTERVAL_S, LIVENESS, clock, seen_at_start=False)
    live.seen()
    catalog = None
    if serves is not None:
        entries = [CatalogEntry(m, "1", b"", workers) for m, workers in serves.items()]
        catalog = CatalogHeader(1, sum(serves.values()), entries)
    return Broker(name, live, catalog)


def test_no_live_broker_is_none() -> None:
    clock = Clock()
    b = broker("a", clock)
    clock.now += INTERVAL_S * LIVENESS + 0.1
    assert choose_broker([b], "m", 0) is None
    assert choose_broker([], "m", 0) is None


def test_a_silent_broker_is_skipped() -> None:
    clock = Clock()
    a, b = broker("a", clock), broker("b", clock)
    clock.now += 2.5
    b.liveness.seen()
    clock.now += 1.0  # a last heard 3.5 s ago, b 1 s ago
    assert [choose_broker([a, b], "m", t).name for t in range(4)] == ["b"] * 4  # type: ignore[union-attr]


def test_brokers_with_a_worker_for_the_model_come_first_in_turn() -> None:
    clock = Clock()
    a = broker("a", clock, {"m": 1})
    b = broker("b", clock, {"m": 0, "other": 2})
    c = broker("c", clock, {"m": 2})
    chosen = [choose_broker([a, b, c], "m", t).name for t in range(4)]  # type: ignore[union-attr]
    assert chosen == ["a", "c", "a", "c"]


def test_without_any_serving_broker_every_live_one_takes_its_turn() -> None:
    clock = Clock()
    a, b = broker("a", clock, {"x": 1}), broker("b", clock)  # b has no catalog yet
    assert [choose_broker([a, b], "m", t).name for t in range(3)] == ["a", "b", "a"]  # type: ignore[union-attr]


def test_a_lost_broker_is_dead_at_once() -> None:
    clock = Clock()
    a, b = broker("a", clock, {"m": 1}), broker("b", clock, {"m": 1})
    a.liveness.lost()
    assert choose_broker([a, b], "m", 0) is b


def test_broker_gate_holds_calls_until_a_broker_answers() -> None:
    async def run() -> list[str]:
        gate = BrokerGate(60.0)
        gate.start(asyncio.get_running_loop())
        order: list[str] = []

        async def call(name: str) -> None:
            await gate.wait(30.0)
            order.append(name)

        tasks = [asyncio.create_task(call(n)) for n in ("a", "b")]
        await asyncio.sleep(0.05)
        order.append("broker up")
        gate.worker_up()
        await asyncio.gather(*tasks)
        assert gate.open and gate.up
        return order

    assert asyncio.run(run()) == ["broker up", "a", "b"]


def test_broker_gate_gives_up_after_its_wait() -> None:
    async def run() -> tuple[float, bool, bool]:
        gate = BrokerGate(0.1)
        gate.start(asyncio.get_running_loop())
        t0 = time.monotonic()
        await gate.wait(None)
        return time.monotonic() - t0, gate.open, gate.up

    waited, opened, up = asyncio.run(run())
    assert opened and not up and 0.05 <= waited < 5.0


def test_broker_gate_wait_leaves_a_tenth_of_the_call_time() -> None:
    async def run() -> tuple[float, bool]:
        gate = BrokerGate(60.0)
        gate.start(asyncio.get_running_loop())
        t0 = time.monotonic()
        await gate.wait(0.5)  # returns at 0.45 s with the gate still shut
        return time.monotonic() - t0, gate.open

    waited, opened = asyncio.run(run())
    assert not opened and 0.4 <= waited < 0.5


def test_broker_gate_shuts_when_every_broker_is_down_and_gives_up_again() -> None:
    async def run() -> list[tuple[bool, bool]]:
        gate = BrokerGate(0.1)
        gate.start(asyncio.get_running_loop())
        gate.worker_up()
        states = [(gate.open, gate.up)]
        gate.workers_down()
        states.append((gate.open, gate.up))
        waiter = asyncio.create_task(gate.wait(30.0))
        await asyncio.sleep(0.02)
        states.append((waiter.done(), gate.up))  # still held
        await waiter  # the gate gave up after 0.1 s
        states.append((gate.open, gate.up))
        gate.workers_down()  # given up already: stays open until a broker answers
        states.append((gate.open, gate.up))
        gate.worker_up()
        states.append((gate.open, gate.up))
        return states

    assert asyncio.run(run()) == [
        (True, True),
        (False, False),
        (False, False),
        (True, False),
        (True, False),
        (True, True),
    ]


def test_broker_gate_opens_only_when_a_live_broker_lists_a_worker() -> None:
    """A restarted broker answers before its workers have joined it again: its first catalog
    (no worker) keeps the gate shut; the one that lists a worker opens it; losing the last
    worker, or the broker, shuts it again."""

    async def run() -> list[bool]:
        clock = Clock()
        gate = BrokerGate(60.0)
        gate.start(asyncio.get_running_loop())
        a = broker("a", clock)  # live, no catalog yet
        states = []
        gate.check([a])
        states.append(gate.open)
        a.catalog = CatalogHeader(1, 0, [])  # answered, no worker connected yet
        gate.check([a])
        states.append(gate.open)
        a.catalog = CatalogHeader(2, 1, [CatalogEntry("m", "1", b"", 1)])
        gate.check([a])
        states.append(gate.open)
        a.catalog = CatalogHeader(3, 0, [])  # the last worker went away
        gate.check([a])
        states.append(gate.open)
        a.catalog = CatalogHeader(4, 1, [CatalogEntry("m", "1", b"", 1)])
        gate.check([a])
        states.append(gate.open)
        a.liveness.lost()  # the broker went away, its last catalog still held
        gate.check([a])
        states.append(gate.open)
        return states

    assert asyncio.run(run()) == [False, False, True, False, True, False]


def test_a_broker_wait_of_zero_never_holds_a_call() -> None:
    async def run() -> tuple[bool, float, float]:
        gate = BrokerGate(0.0)
        gate.start(asyncio.get_running_loop())
        t0 = time.monotonic()
        await gate.wait(30.0)
        first = time.monotonic() - t0
        gate.worker_up()
        gate.workers_down()
        t0 = time.monotonic()
        await gate.wait(30.0)
        return gate.open, first, time.monotonic() - t0

    opened, first, after_down = asyncio.run(run())
    assert opened and first < 0.1 and after_down < 0.1
