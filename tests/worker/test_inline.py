"""Inline instances: a fast CPU model pumped by the worker's I/O thread instead of a thread of
its own. Same replies as the threaded path, never blocking, and a slow model moves to its own
thread on its first slow batch; stop hands what an inline instance holds to its thread, so
join and unload only wait."""

from __future__ import annotations

import queue
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fabric import errors
from fabric.errors import RequestError
from worker.batch_step import Ready
from worker.batcher import Waiting
from worker.config import WorkerConfig
from worker.loaders import LoadedModel, load_model
from worker.models import ModelTable
from worker.repository import scan_model
from worker.runtime import (
    INLINE_FAR_OVER,
    INLINE_SLOW_STREAK,
    InlineJudge,
    ModelInstance,
    State,
)
from worker.server import WorkerServer
from worker.stats import ModelStats

from .test_runtime import (
    FRONTEND,
    WAIT_S,
    Probe,
    Replies,
    batching,
    inbound,
    model_module,
    ragged_rows,
    request_bytes,
    wait_until,
    write_model,
)

SLEEPY_MODEL = """
import time

class Model:
    def execute(self, inputs):
        time.sleep(0.03)
        return {"Y": inputs["X"] * 2, "S": inputs["X"].sum(axis=1, keepdims=True)}
"""


def make_instance(model: LoadedModel, inline_max_s: float) -> tuple[ModelInstance, Replies]:
    replies = Replies()
    inst = ModelInstance(model, 0, replies, ModelStats(), queue.SimpleQueue())
    inst.start(inline_max_s)
    return inst, replies


def pump_until_idle(inst: ModelInstance) -> None:
    while inst.inline and inst.pump() is not None:
        pass


def expected(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=1) * 3


def test_pump_runs_what_waits_as_one_batch_on_the_calling_thread(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    model, probe = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    assert inst.pump() is None  # nothing held: nothing to run, no wait
    rows = {i: ragged_rows(1, 5, seed=i) for i in range(5)}
    for i, x in rows.items():
        inst.inbox.put(inbound(i, request_bytes({"X": x})))
    assert inst.pump() == 0.0  # a batch ran: pump again at once
    assert probe.calls == [(threading.current_thread().name, (5, 5))]
    got = replies.by_id()
    assert sorted(got) == list(range(5))
    for i, x in rows.items():
        assert got[i].status == errors.OK
        np.testing.assert_array_equal(got[i].outputs()["Y"], expected(x))
    assert inst.pump() is None
    assert inst.inline and not inst._thread.is_alive()


def test_a_bad_request_fails_alone_and_the_pump_goes_on(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    model, _ = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    inst.inbox.put(inbound(1, b"\xff\xff not protobuf"))
    inst.inbox.put(inbound(2, request_bytes({"X": ragged_rows(1, 3, seed=2)})))
    pump_until_idle(inst)
    got = replies.by_id()
    assert got[1].status == errors.INVALID_ARGUMENT
    assert got[2].status == errors.OK


def test_a_slow_batch_moves_the_instance_to_its_own_thread(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", "ragged", batching())
    (path / "1" / "model.py").write_text(textwrap.dedent(SLEEPY_MODEL))
    model = load_model(scan_model(path), 1, "cpu")
    inst, replies = make_instance(model, inline_max_s=0.002)  # 30 ms sleep > 10 x 2 ms
    inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    assert inst.pump() == 0.0
    assert replies.wait_for(1)[0].status == errors.OK
    assert not inst.inline and inst._thread.is_alive()
    # From now on its thread takes requests; the I/O thread no longer pumps it.
    inst.inbox.put(inbound(2, request_bytes({"X": ragged_rows(1, 3, seed=2)})))
    assert replies.wait_for(2)[1].status == errors.OK
    inst.stop()
    inst.join(WAIT_S)
    assert not inst._thread.is_alive()


def test_a_batch_that_only_waited_for_the_cpu_stays_inline(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    """Over the limit in wall time but not in CPU time, and under ten times the limit: a
    busy machine, not a slow model."""
    model, probe = ragged
    inst, replies = make_instance(model, inline_max_s=0.02)
    probe.close_gate()
    threading.Timer(0.03, probe.open_gate).start()  # the model blocks ~30 ms, using no CPU
    inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    assert inst.pump() == 0.0
    assert replies.wait_for(1)[0].status == errors.OK
    assert inst.inline and not inst._thread.is_alive()


def test_three_slow_batches_in_a_row_move_the_instance() -> None:
    judge = InlineJudge(0.01)
    assert not judge.too_slow(0.015, 0.012)  # over the limit, in CPU time too
    assert not judge.too_slow(0.015, 0.012)
    assert not judge.too_slow(0.001, 0.001)  # a fast one breaks the streak
    assert not judge.too_slow(0.015, 0.012)
    assert not judge.too_slow(0.015, 0.012)
    assert judge.too_slow(0.015, 0.012)


def test_slow_batches_that_mostly_waited_for_the_cpu_do_not_count() -> None:
    judge = InlineJudge(0.01)
    for _ in range(2 * INLINE_SLOW_STREAK):
        assert not judge.too_slow(0.015, 0.004)  # under INLINE_CPU_SHARE of the limit in CPU


def test_one_batch_far_over_the_limit_moves_the_instance() -> None:
    judge = InlineJudge(0.01)
    assert judge.too_slow(INLINE_FAR_OVER * 0.01 + 0.001, 0.0)


def test_join_on_the_pumping_thread_finishes_what_is_queued(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    """stop() hands what an inline instance holds to its thread: join only waits."""
    model, probe = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    assert inst.pump() is None  # this thread is now the pumping thread
    for i in range(4):
        inst.inbox.put(inbound(i, request_bytes({"X": ragged_rows(1, 3, seed=i)})))
    inst.stop()
    assert inst.pump() is None  # no longer this thread's to run
    inst.join(WAIT_S)
    assert sorted(replies.by_id()) == [0, 1, 2, 3]
    assert inst.finished and inst.state is State.STOPPED
    assert [name for name, _ in probe.calls] == [inst.name]  # run by its thread, not the joiner


def test_join_finishes_an_instance_nobody_pumped_yet(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    """A worker stopping before its loop ever ran: the joiner does the work, no 5 s wait."""
    model, _ = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    inst.stop()
    started = time.monotonic()
    inst.join(WAIT_S)
    assert time.monotonic() - started < 2.0
    assert replies.by_id()[1].status == errors.OK
    assert inst.finished


def test_join_from_another_thread_waits_for_the_pump(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    model, probe = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    go, stop = threading.Event(), threading.Event()

    def io() -> None:  # the pumping thread: pumps once, then idles until told to go on
        inst.pump()
        go.wait(WAIT_S)
        while not stop.is_set():
            inst.pump()
            stop.wait(0.001)

    io_thread = threading.Thread(target=io, name="io")
    io_thread.start()
    for i in range(3):
        inst.inbox.put(inbound(i, request_bytes({"X": ragged_rows(1, 3, seed=i)})))
    inst.stop()
    joined = threading.Event()

    def control() -> None:
        inst.join(WAIT_S)
        joined.set()

    control_thread = threading.Thread(target=control, name="control")
    control_thread.start()
    try:
        # The pumping thread is idle (not pumping): the instance's thread drains it anyway.
        assert joined.wait(WAIT_S)
        assert sorted(replies.by_id()) == [0, 1, 2]
        ran_on = {name for name, _ in probe.calls}
        assert ran_on and ran_on <= {io_thread.name, inst.name}  # never on the joiner
    finally:
        go.set()
        stop.set()
        io_thread.join()


class Io:
    """Stands in for the worker's I/O thread: pumps the table's inline instances."""

    def __init__(self, table: ModelTable) -> None:
        self.table = table
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for inst in self.table.inline:
                if inst.inline:
                    inst.pump()
            self._stop.wait(0.001)

    def __enter__(self) -> Io:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.thread.join()


def test_model_table_runs_single_instance_cpu_models_inline(tmp_path: Path) -> None:
    write_model(tmp_path, "one", "mlp", batching())
    write_model(tmp_path, "two", "mlp", batching() + "instance_group [ { count: 2 } ]\n")
    replies = Replies()
    table = ModelTable(tmp_path, "cpu", replies, min_credit=4, inline_max_s=0.02)
    table.load_all()
    try:
        one = table.served[("one", "1")]
        two = table.served[("two", "1")]
        assert [i.inline for i in one.instances] == [True]
        assert [i.inline for i in two.instances] == [False, False]
        assert table.inline == tuple(one.instances)
        with Io(table):
            one.enter()
            x = np.ones((1, 4), np.float32)
            one.inbox.put(inbound(7, request_bytes({"X": x}), model="one"))
            assert replies.wait_for(1)[0].status == errors.OK
            wait_until(lambda: one.pending == 0)
            # Unloading hands what it holds to its thread, then forgets the instance.
            table.unload("one", "")
        assert ("one", "1") not in table.served
        assert table.inline == ()
    finally:
        table.stop_all()


def test_python_models_always_get_a_thread(tmp_path: Path) -> None:
    """A model.py may sleep or loop on input values: never on the I/O thread."""
    write_model(tmp_path, "py", "ragged", batching())
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4, inline_max_s=10.0)
    table.load_all()
    try:
        assert [i.inline for i in table.served[("py", "1")].instances] == [False]
        assert table.inline == ()
    finally:
        table.stop_all()


def test_model_table_without_an_inline_limit_uses_threads(tmp_path: Path) -> None:
    write_model(tmp_path, "one", "mlp", batching())
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4)
    table.load_all()
    try:
        assert [i.inline for i in table.served[("one", "1")].instances] == [False]
        assert table.inline == ()
    finally:
        table.stop_all()


def test_a_wholly_cancelled_batch_lets_the_next_one_run_in_the_same_pump(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    """Requests of another shape wait behind a batch whose every request was cancelled: they
    run now, not at the I/O loop's next wake-up."""
    model, _ = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    inst.step.take(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    inst.step.take(inbound(2, request_bytes({"X": ragged_rows(1, 5, seed=2)})))  # other shape
    inst.cancelled.add((FRONTEND, 1))
    assert inst.pump() == 0.0
    got = replies.by_id()
    assert got[1].status == errors.CANCELLED
    assert got[2].status == errors.OK


def test_expired_requests_make_room_for_waiting_ones(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    model, _ = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    soon = time.time_ns() + 20_000_000
    for i in range(8):  # a full batch (max_batch_size 8) about to expire, held in the batcher
        inst.step.take(inbound(i, request_bytes({"X": ragged_rows(1, 3, seed=i)}), soon))
    inst.inbox.put(inbound(100, request_bytes({"X": ragged_rows(1, 3, seed=100)})))
    wait_until(lambda: time.time_ns() > soon)  # the held batch's deadlines have passed
    pump_until_idle(inst)
    got = replies.by_id()
    assert {got[i].status for i in range(8)} == {errors.DEADLINE_EXCEEDED}
    assert got[100].status == errors.OK


def test_no_default_warm_up_for_python_models(tmp_path: Path) -> None:
    """A Python model is not called with our zeros at all (its first call is its own); only the
    config's model_warmup would run it."""
    write_model(tmp_path, "py", "ragged", batching())
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4, inline_max_s=0.02)
    table.load_all()
    try:
        assert len(model_module(table.served[("py", "1")].model).CALLS) == 0
    finally:
        table.stop_all()


def test_unload_wakes_the_pumping_thread(tmp_path: Path) -> None:
    """The stop queued for an inline instance does not wait for the I/O loop's next wake-up."""
    write_model(tmp_path, "one", "mlp", batching())
    woken = threading.Event()
    table = ModelTable(tmp_path, "cpu", Replies(), min_credit=4, inline_max_s=0.02, wake=woken.set)
    table.load_all()
    stop = threading.Event()

    def io() -> None:  # sleeps 10 s unless woken, like a poll with a long timeout
        while not stop.is_set():
            woken.wait(10)
            woken.clear()
            for inst in table.inline:
                if inst.inline:
                    inst.pump()

    thread = threading.Thread(target=io, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        table.unload("one", "")
        assert time.monotonic() - started < 2.0
        assert table.inline == ()
    finally:
        stop.set()
        woken.set()
        thread.join(5)
        table.stop_all()


def test_close_pumps_while_the_control_thread_retires_an_inline_model(tmp_path: Path) -> None:
    """Shutdown during an unload: the control thread waits for the I/O thread to pump the
    retiring instance to its end, so close() must keep pumping while it waits (no 5 s stall)."""
    write_model(tmp_path, "one", "mlp", batching())
    config = WorkerConfig(
        brokers=("tcp://127.0.0.1:9",), model_repository=str(tmp_path), inline_compute_ms=20
    )
    server = WorkerServer(config)
    server.load_repository()
    (inst,) = server.models.inline
    assert inst.pump() is None  # this thread pumps, as the I/O thread does
    server._control_thread.start()
    server._control.put(lambda: server.models.unload("one", ""))
    wait_until(lambda: ("one", "1") not in server.models.served)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 3.0
    assert inst.finished


def test_a_pump_waiting_for_the_lock_does_not_run_a_moved_instance(
    ragged: tuple[LoadedModel, Probe],
) -> None:
    """Once the instance moved to its own thread, a pump that was already on its way (a joiner
    and the I/O thread racing) must leave it alone."""
    model, probe = ragged
    inst, replies = make_instance(model, inline_max_s=1.0)
    with inst._lock:  # as a pump does, when a batch was too slow
        inst._leave_inline(2.0)
    inst.inbox.put(inbound(1, request_bytes({"X": ragged_rows(1, 3, seed=1)})))
    assert inst.pump() is None
    assert replies.wait_for(1)[0].status == errors.OK
    assert [name for name, _ in probe.calls] == [inst.name]  # run by its thread only
    inst.stop()
    inst.join(WAIT_S)


def test_an_instance_left_busy_by_unload_is_reaped_when_done(tmp_path: Path) -> None:
    """unload gave up waiting (join timed out): the instance's thread finishes what it holds,
    gets its stop again, and the I/O thread closes its model once it has finished."""
    write_model(tmp_path, "one", "mlp", batching())
    config = WorkerConfig(
        brokers=("tcp://127.0.0.1:9",), model_repository=str(tmp_path), inline_compute_ms=20
    )
    server = WorkerServer(config)
    try:
        server.load_repository()
        (inst,) = server.models.inline
        assert inst.pump() is None  # this thread pumps, as the I/O thread does
        gate, entered = threading.Event(), threading.Event()
        run, stop = inst.step.run, inst.stop

        def held_run(batch: list[Waiting[Ready]]) -> None:  # a batch still running
            entered.set()
            gate.wait(WAIT_S)
            run(batch)

        def stop_once_running() -> None:  # unload goes on once the batch is running
            stop()
            entered.wait(WAIT_S)

        inst.step.run = held_run  # type: ignore[method-assign]
        inst.stop = stop_once_running  # type: ignore[method-assign]
        # Queued after the drain saw nothing pending, as a request racing with the unload.
        inst.inbox.put(inbound(1, request_bytes({"X": np.ones((1, 4), np.float32)}), model="one"))
        inst.join = lambda timeout_s: None  # type: ignore[method-assign]  # as if timed out
        server.models.unload("one", "")
        assert inst.orphaned and not inst.finished
        assert server.models.inline == (inst,)
        gate.set()
        wait_until(lambda: (server._pump_inline(), server.models.inline == ())[1])
        assert inst.finished
        inst._thread.join(WAIT_S)  # its PUSH socket goes with it, inside this test
        with pytest.raises(RequestError):  # its model is closed
            inst.model.execute({"X": np.ones((1, 4), np.float32)})
    finally:
        server.close()
