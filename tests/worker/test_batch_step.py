"""The batch step with a fake clock, and the waiting batcher as production drives it: a model
with ``max_queue_delay_microseconds`` waits (from its oldest request's arrival) for that delay
or a preferred batch size even when its instance is idle; one whose config says
``dispatch_when_idle`` runs what it holds at once."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from fabric import errors
from worker.batch_step import STOP, BatchStep, Cancel, CancelBoard
from worker.loaders import LoadedModel, load_model
from worker.repository import scan_model
from worker.runtime import ModelInstance, State
from worker.stats import ModelStats

from .test_runtime import (
    FRONTEND,
    WAIT_S,
    Probe,
    Replies,
    batching,
    inbound,
    ragged_rows,
    request_bytes,
    write_model,
)

DELAY_S = 0.2
TICK_S = 1e-6
"""Added to a wait that should end it: the fake clock's float sums may fall just short."""
IDLE_DISPATCH = 'parameters { key: "dispatch_when_idle" value { string_value: "true" } }\n'


class FakeClock:
    """Starts at the real monotonic time, so that wire deadlines convert onto it."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def load(tmp_path: Path, config: str) -> tuple[LoadedModel, Probe]:
    model = load_model(scan_model(write_model(tmp_path, "m", "ragged", config)), 1, "cpu")
    return model, Probe(model)


@pytest.fixture
def waiting(tmp_path: Path) -> tuple[LoadedModel, Probe]:
    """Waits up to DELAY_S for a batch of 4 (max 8)."""
    return load(tmp_path, batching((4,), int(DELAY_S * 1e6)))


class Step:
    """A ``BatchStep`` on a fake clock, with its replies and statistics."""

    def __init__(self, model: LoadedModel) -> None:
        self.clock = FakeClock()
        self.replies = Replies()
        self.stats = ModelStats()
        self.step = BatchStep(
            model, "m-0", self.replies, self.stats, CancelBoard(self.clock), clock=self.clock
        )

    def request(self, request_id: int, deadline_ns: int | None = None) -> None:
        x = ragged_rows(1, 3, seed=request_id)
        item = inbound(request_id, request_bytes({"X": x}))
        item.received_s = self.clock()
        if deadline_ns is not None:
            item.header.deadline_ns = deadline_ns
        self.step.take(item)

    def next(self) -> tuple[list[int], float | None]:
        batch, wait_s = self.step.next_batch(lambda: None)
        return [w.item.inbound.header.request_id for w in batch], wait_s

    def statuses(self) -> dict[int, str]:
        return {i: r.status for i, r in self.replies.by_id().items()}


# ---- the pure step ----------------------------------------------------------------------------


def test_a_lone_request_waits_for_the_delay_from_its_arrival(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    s = Step(waiting[0])
    s.request(1)
    assert s.next() == ([], pytest.approx(DELAY_S))
    s.clock.advance(0.15)
    assert s.next() == ([], pytest.approx(0.05))
    s.clock.advance(0.05 + TICK_S)
    assert s.next() == ([1], None)


def test_a_preferred_batch_size_is_cut_before_the_delay(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    s = Step(waiting[0])
    for i in range(3):
        s.request(i)
        s.clock.advance(0.01)
    assert s.next()[0] == []
    s.request(3)
    assert s.next() == ([0, 1, 2, 3], None)


def test_run_splits_outputs_into_one_reply_per_request(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    model, probe = waiting
    s = Step(model)
    for i in range(4):
        s.request(i)
    batch, _ = s.step.next_batch(lambda: None)
    s.step.run(batch)
    assert probe.rows == [4]
    got = s.replies.by_id()
    for i in range(4):
        y = got[i].outputs()["Y"]
        assert (y == ragged_rows(1, 3, seed=i).cumsum(axis=1) * 3).all()
    assert s.stats.execution_count == 1 and s.stats.inference_count == 4


def test_a_deadline_before_the_delay_is_answered_when_it_passes(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    s = Step(waiting[0])
    s.request(1, deadline_ns=time.time_ns() + 50_000_000)
    _, wait_s = s.next()
    assert wait_s is not None and wait_s < 0.06  # wakes for the deadline, not the delay
    s.clock.advance(0.06)
    assert s.next() == ([], None)
    assert s.statuses() == {1: errors.DEADLINE_EXCEEDED}
    assert s.stats.expired == 1


def test_a_cancel_answers_a_waiting_request_at_once(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    s = Step(waiting[0])
    s.request(1)
    s.request(2)
    s.step.take(Cancel(FRONTEND, 1))
    assert s.statuses() == {1: errors.CANCELLED}
    s.clock.advance(DELAY_S + TICK_S)
    assert s.next() == ([2], None)
    assert s.stats.cancelled == 1


def test_a_cancel_on_the_board_drops_the_request_from_its_batch(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    s = Step(waiting[0])
    for i in range(4):
        s.request(i)
    s.step.cancelled.add((FRONTEND, 2))
    assert s.next() == ([0, 1, 3], None)
    assert s.statuses() == {2: errors.CANCELLED}


def test_a_stopping_step_cuts_without_waiting(waiting: tuple[LoadedModel, Probe]) -> None:
    s = Step(waiting[0])
    s.request(1)
    s.step.take(STOP)
    assert not s.step.wants_more and not s.step.done
    assert s.next() == ([1], None)
    assert s.step.done


def test_without_dynamic_batching_each_request_is_cut_at_once(tmp_path: Path) -> None:
    s = Step(load(tmp_path, "")[0])
    s.request(1)
    s.request(2)
    assert s.next() == ([1], None)
    assert s.next() == ([2], None)


def test_dispatch_when_idle_cuts_at_once_despite_the_delay(tmp_path: Path) -> None:
    s = Step(load(tmp_path, batching((4,), int(DELAY_S * 1e6)) + IDLE_DISPATCH)[0])
    s.request(1)
    assert s.next() == ([1], None)


def test_cancel_board_forgets_old_keys_by_its_clock() -> None:
    clock = FakeClock()
    board = CancelBoard(clock)
    board.add((FRONTEND, 1))
    clock.advance(121.0)
    board.add((FRONTEND, 2))
    assert not board.take((FRONTEND, 1))
    assert board.take((FRONTEND, 2)) and not board


# ---- as production drives it ------------------------------------------------------------------


def test_the_inline_driver_waits_for_the_delay_on_an_idle_instance(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    model, probe = waiting
    clock, replies = FakeClock(), Replies()
    inst = ModelInstance(model, 0, replies, ModelStats(), queue.SimpleQueue(), clock=clock)
    inst.start(inline_max_s=1.0)
    item = inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)}))
    item.received_s = clock()  # as the I/O thread stamps it
    inst.inbox.put(item)
    assert inst.pump() == pytest.approx(DELAY_S)
    assert probe.calls == [] and replies.items == []
    clock.advance(DELAY_S / 2)
    assert inst.pump() == pytest.approx(DELAY_S / 2)
    assert probe.calls == []
    clock.advance(DELAY_S / 2 + TICK_S)
    assert inst.pump() == 0.0
    assert probe.rows == [1] and replies.by_id()[1].status == errors.OK


def test_the_threaded_driver_waits_for_the_delay_on_an_idle_instance(
    waiting: tuple[LoadedModel, Probe],
) -> None:
    """Fails when the runtime dispatches at once to an idle instance whatever the config."""
    model, probe = waiting
    replies = Replies()
    inst = ModelInstance(model, 0, replies, ModelStats(), queue.SimpleQueue())
    inst.start()
    try:
        sent = time.monotonic()
        inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
        replies.wait_for(1)
        assert time.monotonic() - sent >= DELAY_S * 0.9
        # A preferred batch runs as soon as it is there.
        sent = time.monotonic()
        for i in range(2, 6):
            inst.inbox.put(inbound(i, request_bytes({"X": ragged_rows(1, 3, seed=i)})))
        replies.wait_for(5)
        assert time.monotonic() - sent < DELAY_S * 0.9
        assert probe.rows == [1, 4]
    finally:
        inst.stop()
        inst.join(WAIT_S)
    assert inst.state is State.STOPPED


def test_dispatch_when_idle_runs_a_lone_request_at_once(tmp_path: Path) -> None:
    model, probe = load(tmp_path, batching((4,), 10_000_000) + IDLE_DISPATCH)  # 10 s delay
    replies = Replies()
    inst = ModelInstance(model, 0, replies, ModelStats(), queue.SimpleQueue())
    inst.start()
    try:
        inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
        assert replies.wait_for(1, timeout_s=5.0)[0].status == errors.OK
        assert probe.rows == [1]
    finally:
        inst.stop()
        inst.join(WAIT_S)


def test_stop_answers_a_request_still_waiting_for_its_delay(tmp_path: Path) -> None:
    model, _ = load(tmp_path, batching((4,), 10_000_000))  # would wait 10 s
    replies = Replies()
    inst = ModelInstance(model, 0, replies, ModelStats(), queue.SimpleQueue())
    inst.start()
    inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    started = time.monotonic()
    inst.stop()
    inst.join(WAIT_S)
    assert time.monotonic() - started < 5.0
    assert replies.by_id()[1].status == errors.OK
    assert not any(t.name == inst.name and t.is_alive() for t in threading.enumerate())
