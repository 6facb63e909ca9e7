"""Dynamic batching decisions with a fake clock: when a batch is cut, what it holds, and the
invariants that must hold for any sequence of arrivals."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.batcher import Batcher, BatchPolicy, Waiting


class FakeClock:
    def __init__(self, now: float = 10.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


class Bench:
    """A batcher plus a counter naming requests in arrival order."""

    def __init__(self, policy: BatchPolicy, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.batcher: Batcher[int] = Batcher(policy, self.clock)
        self.n = 0

    def add(self, rows: int = 1, sig: Hashable = "A", deadline_s: float | None = None) -> int:
        self.n += 1
        self.batcher.add(Waiting(self.n, ("fe", self.n), rows, sig, self.clock(), deadline_s))
        return self.n

    def next(self, idle: bool = True) -> tuple[list[int], float | None]:
        batch, wait = self.batcher.next_batch(idle=idle)
        return [w.item for w in batch], wait


def bench(
    max_batch_size: int = 8,
    delay_us: int = 1000,
    preferred: tuple[int, ...] = (),
    when_idle: bool = True,
) -> Bench:
    return Bench(BatchPolicy(max_batch_size, delay_us, preferred, when_idle))


# ---- when a batch is cut --------------------------------------------------------------------


def test_nothing_waiting() -> None:
    b = bench()
    assert b.next(idle=True) == ([], None)
    assert b.next(idle=False) == ([], None)


def test_idle_dispatch_takes_what_is_there_at_once() -> None:
    b = bench(max_batch_size=8, delay_us=100_000)
    ids = [b.add(rows) for rows in (1, 2, 1)]
    assert b.next(idle=True) == (ids, None)
    assert len(b.batcher) == 0


def test_idle_dispatch_can_be_turned_off() -> None:
    b = bench(max_batch_size=8, delay_us=1000, when_idle=False)
    b.add(3)
    batch, wait = b.next(idle=True)
    assert batch == []
    assert wait == pytest.approx(0.001)


def test_busy_waits_for_the_queue_delay() -> None:
    b = Bench(BatchPolicy(max_batch_size=8, max_queue_delay_us=500), FakeClock(0.0))
    first = b.add(2)
    assert b.next(idle=False) == ([], pytest.approx(0.0005))
    b.clock.advance(0.0002)
    second = b.add(3)
    # The wait is measured from the oldest request's arrival.
    assert b.next(idle=False) == ([], pytest.approx(0.0003))
    b.clock.advance(0.0002)
    assert b.next(idle=False) == ([], pytest.approx(0.0001))
    b.clock.now = 0.0005  # exactly the delay after the oldest arrived
    assert b.next(idle=False) == ([first, second], None)


def test_busy_cuts_as_soon_as_max_rows_are_there() -> None:
    b = bench(max_batch_size=4, delay_us=10_000)
    a = b.add(1)
    c = b.add(2)
    assert b.next(idle=False)[0] == []
    d = b.add(1)  # 4 rows: full
    e = b.add(1)
    assert b.next(idle=False) == ([a, c, d], None)
    # The leftover row starts over: it waits for the delay measured from its own arrival.
    assert b.next(idle=False) == ([], pytest.approx(0.01))
    assert b.next(idle=True) == ([e], None)


def test_busy_cuts_when_a_preferred_size_is_exactly_reachable() -> None:
    b = bench(max_batch_size=16, delay_us=10_000, preferred=(4,))
    a = b.add(1)
    c = b.add(2)
    assert b.next(idle=False)[0] == []  # 1, 3: not 4
    d = b.add(1)  # 1, 3, 4: exactly 4
    assert b.next(idle=False) == ([a, c, d], None)


def test_busy_preferred_size_not_reachable_exactly_keeps_waiting() -> None:
    b = bench(max_batch_size=16, delay_us=10_000, preferred=(4,))
    b.add(3)
    b.add(2)  # prefix sums 3, 5: 4 is skipped over
    batch, wait = b.next(idle=False)
    assert batch == []
    assert wait == pytest.approx(0.01)


def test_zero_delay_never_waits() -> None:
    b = bench(max_batch_size=8, delay_us=0, when_idle=False)
    a = b.add(1)
    assert b.next(idle=False) == ([a], None)


# ---- what a batch holds ---------------------------------------------------------------------


def test_cut_takes_the_largest_preferred_size_that_fits_exactly() -> None:
    b = bench(max_batch_size=8, preferred=(2, 4, 6))
    ids = [b.add(1) for _ in range(7)]
    assert b.next()[0] == ids[:6]
    assert b.next()[0] == ids[6:]


def test_cut_skips_preferred_sizes_not_reachable_exactly() -> None:
    b = bench(max_batch_size=8, preferred=(4, 6))
    ids = [b.add(r) for r in (2, 3, 1, 1, 1)]  # prefix sums 2, 5, 6, 7, 8: 4 unreachable
    assert b.next()[0] == ids[:3]


def test_cut_without_a_reachable_preferred_size_takes_as_many_rows_as_fit() -> None:
    b = bench(max_batch_size=8, preferred=(4,))
    ids = [b.add(r) for r in (3, 3, 3)]  # prefix sums 3, 6, 9
    assert b.next()[0] == ids[:2]
    assert b.next()[0] == ids[2:]


def test_preferred_sizes_above_max_batch_size_are_ignored_by_the_cut() -> None:
    b = bench(max_batch_size=8, preferred=(16,))
    ids = [b.add(1) for _ in range(20)]
    assert b.next()[0] == ids[:8]


def test_cut_stops_at_the_first_request_that_does_not_fit() -> None:
    # Arrival order wins over packing: the 1-row request behind a 5-row one waits.
    b = bench(max_batch_size=8)
    ids = [b.add(r) for r in (4, 5, 1)]
    assert b.next()[0] == ids[:1]
    assert b.next()[0] == ids[1:]


def test_a_request_larger_than_max_runs_alone() -> None:
    b = bench(max_batch_size=4)
    big = b.add(9)
    small = b.add(1)
    assert b.next(idle=False) == ([big], None)
    assert b.next(idle=True) == ([small], None)


def test_never_mixes_signatures_oldest_group_first() -> None:
    b = bench(max_batch_size=8)
    a1 = b.add(1, "A")
    b1 = b.add(1, "B")
    a2 = b.add(1, "A")
    b2 = b.add(2, "B")
    a3 = b.add(1, "A")
    assert b.next() == ([a1, a2, a3], None)
    assert b.next() == ([b1, b2], None)
    assert b.next() == ([], None)


def test_busy_readiness_looks_only_at_the_oldest_group() -> None:
    b = bench(max_batch_size=4, delay_us=10_000)
    b.add(1, "A")
    b.add(4, "B")  # B alone could fill a batch, but A is older
    batch, wait = b.next(idle=False)
    assert batch == []
    assert wait == pytest.approx(0.01)


def test_max_batch_size_zero_runs_one_request_at_a_time() -> None:
    b = bench(max_batch_size=0, delay_us=10_000, preferred=(2,))
    ids = [b.add(1) for _ in range(3)]
    assert b.batcher.policy.max_rows == 1
    # Ready at once even when busy: there is nothing to wait for.
    assert b.next(idle=False) == ([ids[0]], None)
    assert b.next(idle=True) == ([ids[1]], None)
    assert b.next(idle=False) == ([ids[2]], None)


# ---- cancel and expire ----------------------------------------------------------------------


def test_cancel_removes_only_that_request() -> None:
    b = bench()
    a = b.add()
    c = b.add()
    d = b.add()
    removed = b.batcher.cancel(("fe", c))
    assert removed is not None
    assert removed.item == c
    assert b.batcher.cancel(("fe", c)) is None
    assert b.batcher.cancel(("other", a)) is None
    assert b.next() == ([a, d], None)


def test_cancel_of_the_oldest_moves_the_delay_to_the_next() -> None:
    b = bench(max_batch_size=8, delay_us=1000)
    a = b.add()
    b.clock.advance(0.0004)
    b.add()
    b.batcher.cancel(("fe", a))
    assert b.next(idle=False) == ([], pytest.approx(0.001))


def test_a_deadline_before_the_delay_ends_shortens_the_wait() -> None:
    b = bench(max_batch_size=8, delay_us=10_000, when_idle=False)
    b.add(deadline_s=b.clock() + 0.004)
    assert b.next(idle=False) == ([], pytest.approx(0.004))
    b.clock.advance(0.004)
    assert b.next(idle=False) == ([], pytest.approx(0.0))
    assert len(b.batcher.expire()) == 1
    assert b.next(idle=False) == ([], None)


def test_expire_removes_requests_past_their_deadline() -> None:
    b = bench()
    now = b.clock()
    a = b.add(deadline_s=now + 1.0)
    c = b.add(deadline_s=None)
    d = b.add(deadline_s=now + 0.5)
    e = b.add(deadline_s=now + 2.0)
    assert b.batcher.expire() == []
    b.clock.advance(0.5)  # reaching the deadline is passing it
    assert [w.item for w in b.batcher.expire()] == [d]
    b.clock.advance(0.6)
    assert [w.item for w in b.batcher.expire()] == [a]
    assert b.batcher.expire() == []
    assert b.next() == ([c, e], None)


def test_expire_everything() -> None:
    b = bench()
    ids = [b.add(deadline_s=b.clock() + i) for i in range(1, 4)]
    b.clock.advance(10)
    assert [w.item for w in b.batcher.expire()] == ids
    assert len(b.batcher) == 0
    assert b.next() == ([], None)


# ---- invariants for any arrival sequence ----------------------------------------------------

add_op = st.tuples(st.just("add"), st.integers(1, 8), st.sampled_from(["A", "B"]))
next_op = st.tuples(st.just("next"), st.booleans(), st.just(""))
tick_op = st.tuples(st.just("tick"), st.integers(0, 3000), st.just(""))  # microseconds
policies = st.builds(
    BatchPolicy,
    max_batch_size=st.integers(0, 16),
    max_queue_delay_us=st.integers(0, 2000),
    preferred_batch_sizes=st.lists(st.integers(1, 20), max_size=3, unique=True).map(tuple),
    dispatch_when_idle=st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies,
    ops=st.lists(st.one_of(add_op, next_op, tick_op), max_size=60),
)
def test_batching_invariants(policy: BatchPolicy, ops: list[tuple[str, object, object]]) -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(policy, clock)
    added: dict[int, tuple[int, str]] = {}  # id -> (rows, signature)
    batches: list[list[Waiting[int]]] = []

    def take(idle: bool) -> float | None:
        batch, wait = batcher.next_batch(idle=idle)
        if batch:
            assert wait is None
            batches.append(batch)
        else:
            assert wait is None if len(batcher) == 0 else wait is not None and wait >= 0
        return wait

    for op, a, sig in ops:
        if op == "add":
            rid = len(added)
            assert isinstance(a, int) and isinstance(sig, str)
            added[rid] = (a, sig)
            batcher.add(Waiting(rid, rid, a, sig, clock(), None))
        elif op == "next":
            assert isinstance(a, bool)
            wait = take(idle=a)
            if wait is not None:
                # Waiting as long as told makes a batch ready, even when busy.
                clock.advance(wait + 1e-9)
                assert take(idle=False) is None
        else:
            assert isinstance(a, int)
            clock.advance(a / 1e6)
    while len(batcher):
        clock.advance(1.0)
        before = len(batcher)
        take(idle=False)
        assert len(batcher) < before

    seen = [w.item for batch in batches for w in batch]
    assert sorted(seen) == sorted(added), "every request in exactly one batch"
    assert len(seen) == len(set(seen))
    for batch in batches:
        rows = sum(w.rows for w in batch)
        assert rows <= policy.max_rows or len(batch) == 1
        if policy.max_batch_size == 0:
            assert len(batch) == 1
        assert len({w.signature for w in batch}) == 1
        assert [w.rows for w in batch] == [added[w.item][0] for w in batch]
    for signature in ("A", "B"):
        order = [
            w.item for w in (w for batch in batches for w in batch) if w.signature == signature
        ]
        assert order == sorted(order), f"arrival order within {signature}"
