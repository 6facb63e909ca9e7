"""The attempt planner with a fake clock: retries, backoff, the retry budget, the deadline,
hedging (fixed delay and p95), first reply wins, non-idempotent models. No asyncio, no sockets:
time is the ``now`` each call is given."""

from __future__ import annotations

import random

import pytest

from fabric import errors
from fabric.protocol import FLAG_NON_IDEMPOTENT
from frontend.attempts import (
    DEADLINE_REPLY,
    NOT_A_HEDGE,
    AttemptPlanner,
    Cancel,
    Finish,
    Send,
)
from frontend.fabric_client import Reply
from frontend.policy import DEFAULT_POLICY, P95_MIN_SAMPLES, LatencyTracker, ModelPolicy
from frontend.resilience import RetryBudget, RetryPolicy

T0 = 100.0
TIMEOUT_S = 10.0
OK = Reply(errors.OK, "", b"response")
UNAVAILABLE = Reply(errors.UNAVAILABLE, "the worker serving this request was lost", None)
INVALID = Reply(errors.INVALID_ARGUMENT, "bad input", None)
ABORTED = Reply(errors.ABORTED, "the worker was lost; it may have run", None)
HEDGED = ModelPolicy(hedge_after_s=0.05)
DEFAULT_RETRIES = RetryPolicy()


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def planner(
    policy: ModelPolicy = DEFAULT_POLICY,
    *,
    tracker: LatencyTracker | None = None,
    retry_policy: RetryPolicy = DEFAULT_RETRIES,
    budget: RetryBudget | None = None,
    timeout_s: float = TIMEOUT_S,
    seed: int = 1,
) -> AttemptPlanner:
    return AttemptPlanner(
        policy,
        tracker if tracker is not None else LatencyTracker(),
        retry_policy,
        budget if budget is not None else RetryBudget(clock=FakeClock()),
        T0 + timeout_s,
        random.Random(seed),
    )


def send(attempt: int, retry: int = 0, hedge_of: int = NOT_A_HEDGE) -> Send:
    return Send(attempt, hedge_of, retry)


def empty_budget() -> RetryBudget:
    budget = RetryBudget(ratio=0.0, min_per_s=0.0, max_tokens=0.0, clock=FakeClock())
    assert not budget.try_spend()
    return budget


# ---- one try, one reply ----------------------------------------------------------------------


def test_first_try_then_ok_finishes_with_the_reply() -> None:
    tracker = LatencyTracker()
    p = planner(tracker=tracker)
    assert p.start(T0) == (send(0),)
    assert p.live == [0]
    assert p.next_wakeup() == T0 + TIMEOUT_S  # nothing due before the deadline
    assert p.on_reply(0, OK, T0 + 0.01) == (Finish(OK),)
    assert p.finished and p.live == []
    assert p.on_timer(T0 + TIMEOUT_S) == ()  # an answer was given: nothing more happens


def test_start_counts_a_request_for_the_retry_budget() -> None:
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, max_tokens=100.0, clock=FakeClock())
    while budget.try_spend():
        pass
    planner(budget=budget).start(T0)
    assert budget.try_spend()  # the request earned a whole token (ratio 1.0)


# ---- retries -----------------------------------------------------------------------------------


def test_unavailable_is_retried_after_a_backoff() -> None:
    p = planner()
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.001) == ()  # backing off: nothing to send yet
    assert p.live == [] and p.retry_at is not None
    assert p.failed == UNAVAILABLE
    wake = p.next_wakeup()
    assert wake == p.retry_at
    assert T0 + 0.001 <= wake <= T0 + 0.001 + 0.04  # first retry: base * 2
    assert p.on_timer(wake - 1e-6) == ()  # not yet
    assert p.on_timer(wake) == (send(1, retry=1),)
    assert p.on_reply(1, OK, wake + 0.01) == (Finish(OK),)


def test_invalid_argument_is_not_retried() -> None:
    p = planner()
    p.start(T0)
    assert p.on_reply(0, INVALID, T0 + 0.001) == (Finish(INVALID),)
    assert p.retries == 0 and p.sent == 1


def test_retries_stop_after_max_retries_with_the_last_failure() -> None:
    p = planner(retry_policy=RetryPolicy(max_retries=2))
    p.start(T0)
    now = T0
    for attempt in range(2):
        now += 0.001
        assert p.on_reply(attempt, UNAVAILABLE, now) == ()
        now = p.next_wakeup()
        assert p.on_timer(now) == (send(attempt + 1, retry=attempt + 1),)
    last = Reply(errors.UNAVAILABLE, "no broker is reachable", None)
    assert p.on_reply(2, last, now + 0.001) == (Finish(last),)
    assert p.sent == 3


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_backoff_is_full_jitter_within_bounds_and_follows_the_seeded_rng(seed: int) -> None:
    retry_policy = RetryPolicy(max_retries=6, base_backoff_s=0.02, max_backoff_s=0.1)
    p = planner(retry_policy=retry_policy, seed=seed)
    replay = random.Random(seed)
    p.start(T0)
    now = T0
    delays = []
    for attempt in range(6):
        assert p.on_reply(attempt, UNAVAILABLE, now) == ()
        retry = attempt + 1
        bound = min(0.1, 0.02 * 2**retry, (T0 + TIMEOUT_S - now) / 2)
        delay = p.next_wakeup() - now
        assert 0.0 <= delay <= bound
        assert delay == pytest.approx(replay.uniform(0, min(0.1, 0.02 * 2**retry)))
        delays.append(delay)
        now = p.next_wakeup()
        assert p.on_timer(now) == (send(retry, retry=retry),)
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule


def test_backoff_is_at_most_half_the_time_left() -> None:
    retry_policy = RetryPolicy(base_backoff_s=0.02, max_backoff_s=5.0)
    delays = []
    for seed in range(50):
        p = planner(retry_policy=retry_policy, timeout_s=0.1, seed=seed)
        p.start(T0)
        assert p.on_reply(0, UNAVAILABLE, T0 + 0.06) == ()
        delays.append(p.next_wakeup() - (T0 + 0.06))
    # Uncapped, the first retry's bound would be 0.04 s; half of the 0.04 s left is 0.02 s.
    assert max(delays) <= 0.02 + 1e-9
    assert min(delays) >= 0.0


def test_an_empty_budget_stops_retries() -> None:
    # One token: the first retry is granted, the second is not.
    budget = RetryBudget(ratio=0.0, min_per_s=0.0, max_tokens=1.0, clock=FakeClock())
    p = planner(budget=budget, retry_policy=RetryPolicy(max_retries=5))
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0) == ()
    assert p.on_timer(p.next_wakeup()) == (send(1, retry=1),)
    assert p.on_reply(1, UNAVAILABLE, T0 + 0.1) == (Finish(UNAVAILABLE),)
    assert p.retries == 1


def test_budget_is_shared_between_calls() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=0.0, max_tokens=1.0, clock=FakeClock())
    first, second = planner(budget=budget), planner(budget=budget)
    first.start(T0)
    second.start(T0)
    assert first.on_reply(0, UNAVAILABLE, T0) == ()
    assert second.on_reply(0, UNAVAILABLE, T0) == (Finish(UNAVAILABLE),)


# ---- the deadline ----------------------------------------------------------------------------


def test_deadline_cancels_the_copy_in_flight_and_answers_deadline_exceeded() -> None:
    p = planner(timeout_s=1.0)
    p.start(T0)
    assert p.next_wakeup() == T0 + 1.0
    assert p.on_timer(T0 + 0.999) == ()
    assert p.on_timer(T0 + 1.0) == (Cancel(0), Finish(DEADLINE_REPLY))
    assert DEADLINE_REPLY.status == errors.DEADLINE_EXCEEDED
    assert DEADLINE_REPLY.message == "deadline exceeded waiting for a worker"
    assert p.on_reply(0, OK, T0 + 1.1) == ()  # too late: already answered


def test_no_retry_without_time_left_for_it() -> None:
    # RetryPolicy wants more than base_backoff_s left; the failure itself is the answer.
    p = planner(retry_policy=RetryPolicy(base_backoff_s=0.02), timeout_s=1.0)
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.99) == (Finish(UNAVAILABLE),)


def test_deadline_during_a_retry_gives_deadline_exceeded() -> None:
    p = planner(timeout_s=0.5)
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.1) == ()
    retry_at = p.next_wakeup()
    assert retry_at < T0 + 0.5  # a backoff never outlasts the deadline
    assert p.on_timer(retry_at) == (send(1, retry=1),)
    assert p.next_wakeup() == T0 + 0.5
    assert p.on_timer(T0 + 0.5) == (Cancel(1), Finish(DEADLINE_REPLY))


# ---- hedging ---------------------------------------------------------------------------------


def test_hedge_fires_at_the_fixed_delay() -> None:
    p = planner(HEDGED)
    p.start(T0)
    assert p.next_wakeup() == pytest.approx(T0 + 0.05)
    assert p.on_timer(T0 + 0.049) == ()
    assert p.on_timer(T0 + 0.05) == (send(1, hedge_of=0),)
    assert p.live == [0, 1]
    assert p.next_wakeup() == T0 + TIMEOUT_S  # one hedge per round


def test_hedge_fires_at_the_models_recent_p95() -> None:
    tracker = LatencyTracker()
    policy = ModelPolicy(hedge_p95=True)
    # Before enough latencies are known, p95 hedging waits.
    p = planner(policy, tracker=tracker)
    p.start(T0)
    assert p.next_wakeup() == T0 + TIMEOUT_S
    # Enough calls through planners, answered after 1, 2, ..., 50 ms (newest first).
    latencies_ms = range(P95_MIN_SAMPLES, 0, -1)
    for ms in latencies_ms:
        q = planner(policy, tracker=tracker)
        q.start(T0)
        assert q.on_reply(0, OK, T0 + ms / 1000) == (Finish(OK),)
    p95 = sorted(ms / 1000 for ms in latencies_ms)[int(0.95 * (P95_MIN_SAMPLES - 1))]
    assert p95 == pytest.approx(0.047)
    assert tracker.p95() == pytest.approx(p95)
    p = planner(policy, tracker=tracker)
    p.start(T0)
    assert p.next_wakeup() == pytest.approx(T0 + p95)
    assert p.on_timer(T0 + p95 * 0.99) == ()
    assert p.on_timer(T0 + p95) == (send(1, hedge_of=0),)


def test_no_hedge_when_its_delay_leaves_no_time_before_the_deadline() -> None:
    p = planner(ModelPolicy(hedge_after_s=0.5), timeout_s=0.5)
    p.start(T0)
    assert p.hedge_at is None
    assert p.next_wakeup() == T0 + 0.5


def test_no_hedge_when_the_budget_is_empty() -> None:
    p = planner(HEDGED, budget=empty_budget())
    p.start(T0)
    assert p.on_timer(T0 + 0.05) == ()
    assert p.live == [0] and p.next_wakeup() == T0 + TIMEOUT_S


def test_hedge_wins_and_the_first_copy_is_cancelled() -> None:
    p = planner(HEDGED)
    p.start(T0)
    p.on_timer(T0 + 0.05)
    assert p.on_reply(1, OK, T0 + 0.06) == (Cancel(0), Finish(OK))
    assert p.on_reply(0, OK, T0 + 0.5) == ()  # the loser's late reply changes nothing


def test_first_copy_wins_and_the_hedge_is_cancelled() -> None:
    p = planner(HEDGED)
    p.start(T0)
    p.on_timer(T0 + 0.05)
    assert p.on_reply(0, OK, T0 + 0.06) == (Cancel(1), Finish(OK))


def test_hedge_losers_error_is_ignored_when_the_other_copy_succeeds() -> None:
    p = planner(HEDGED)
    p.start(T0)
    p.on_timer(T0 + 0.05)
    assert p.on_reply(1, UNAVAILABLE, T0 + 0.06) == ()  # the first copy may still answer
    assert p.retries == 0
    assert p.on_reply(0, OK, T0 + 0.2) == (Finish(OK),)


def test_round_of_two_failures_answers_with_the_first_copys_failure() -> None:
    p = planner(HEDGED)
    p.start(T0)
    p.on_timer(T0 + 0.05)
    assert p.on_reply(1, UNAVAILABLE, T0 + 0.06) == ()
    assert p.on_reply(0, INVALID, T0 + 0.07) == (Finish(INVALID),)  # not retried


def test_failure_before_the_hedge_delay_ends_the_round_without_a_hedge() -> None:
    p = planner(HEDGED)
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.01) == ()
    assert p.hedge_at is None  # the pending hedge went with its round
    retry_at = p.next_wakeup()
    assert retry_at < T0 + 0.05
    assert p.on_timer(retry_at) == (send(1, retry=1),)
    # The retry's round hedges too, its delay counted from the retry.
    assert p.next_wakeup() == pytest.approx(retry_at + 0.05)
    assert p.on_timer(retry_at + 0.05) == (send(2, retry=1, hedge_of=1),)


def test_a_copy_that_could_not_be_sent_counts_as_its_failure() -> None:
    # What the shell reports when submit raises: the hedged copy alone carries the round.
    p = planner(HEDGED)
    p.start(T0)
    p.on_timer(T0 + 0.05)
    no_broker = Reply(errors.UNAVAILABLE, "no broker is reachable", None)
    assert p.on_reply(1, no_broker, T0 + 0.05) == ()
    assert p.on_reply(0, OK, T0 + 0.3) == (Finish(OK),)


# ---- non-idempotent models ----------------------------------------------------------------------

NON_IDEMPOTENT = ModelPolicy(flags=FLAG_NON_IDEMPOTENT, hedge_after_s=0.01)


def test_non_idempotent_model_never_hedges() -> None:
    p = planner(NON_IDEMPOTENT)
    p.start(T0)
    assert p.next_wakeup() == T0 + TIMEOUT_S
    assert p.on_timer(T0 + 0.01) == ()
    assert p.on_timer(T0 + 5.0) == ()
    assert p.live == [0]


def test_non_idempotent_request_that_may_have_run_is_not_retried() -> None:
    p = planner(NON_IDEMPOTENT)
    p.start(T0)
    assert p.on_reply(0, ABORTED, T0 + 0.1) == (Finish(ABORTED),)
    assert p.sent == 1


def test_non_idempotent_request_that_cannot_have_run_is_retried() -> None:
    # UNAVAILABLE is what the fabric says of a non-idempotent request before it started
    # (no broker, worker lost before accepting it): retrying cannot run it twice.
    p = planner(NON_IDEMPOTENT)
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.1) == ()
    assert p.on_timer(p.next_wakeup()) == (send(1, retry=1),)


# ---- latency records -------------------------------------------------------------------------


def test_only_successes_are_recorded_with_their_whole_latency() -> None:
    tracker = LatencyTracker()

    def call() -> None:
        p = planner(tracker=tracker)
        p.start(T0)
        assert p.on_reply(0, UNAVAILABLE, T0 + 0.001) == ()  # failures record nothing
        assert p.on_timer(p.next_wakeup()) == (send(1, retry=1),)
        assert p.on_reply(1, OK, T0 + 0.2) == (Finish(OK),)  # from the call's start

    for _ in range(P95_MIN_SAMPLES - 1):
        call()
    assert tracker.p95() is None  # 49 samples: had failures counted, there would be 98
    call()
    assert tracker.p95() == pytest.approx(0.2)


def test_first_copy_answering_before_the_hedge_delay_means_no_hedge() -> None:
    p = planner(HEDGED)
    p.start(T0)
    assert p.on_reply(0, OK, T0 + 0.01) == (Finish(OK),)
    assert p.hedge_at is None
    assert p.on_timer(T0 + 0.05) == ()
    assert p.sent == 1


def test_deadline_reached_while_backing_off_answers_deadline_exceeded() -> None:
    # A shell woken late (a busy loop) may find the deadline passed before the retry was sent.
    p = planner(timeout_s=0.5)
    p.start(T0)
    assert p.on_reply(0, UNAVAILABLE, T0 + 0.1) == ()
    assert p.live == []
    assert p.on_timer(T0 + 0.6) == (Finish(DEADLINE_REPLY),)
    assert p.retry_at is None and p.sent == 1
