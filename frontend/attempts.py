"""The attempts of one inference call, decided without I/O: what to send when, what to cancel,
when to give up.

``AttemptPlanner`` is driven by three calls, each given the monotonic time, and answers with a
short tuple of actions that ``inference_service.py`` executes:

- ``start(now)``: the first try;
- ``on_reply(attempt, reply, now)``: a copy answered (or could not be sent at all);
- ``on_timer(now)``: ``next_wakeup()`` has come (a hedge is due, a backoff ended, the deadline
  passed).

Actions are ``Send`` (submit a copy; attempts are numbered 0, 1, 2, ... in send order),
``Cancel`` (drop a copy still in flight) and ``Finish`` (the call's answer). A batch holds at
most one ``Send``, always last, so a shell that finds it cannot submit can report the failure
through ``on_reply`` at once. ``Finish`` comes after the ``Cancel`` of every copy in flight.

The rules (the frontend's behaviour since the first build):
- a round is one try plus, for idempotent models with a hedge delay (fixed, or the model's
  recent p95), one hedged copy sent when the first has not answered after that delay, if the
  retry budget grants it and the deadline leaves room;
- the first OK reply of any copy wins; the others are cancelled. A round whose copies all
  failed ends with the first copy's failure;
- a failed round is retried when ``RetryPolicy`` allows it (retryable status, retries left, time
  left) and the ``RetryBudget`` grants a token, after capped exponential backoff with full
  jitter; otherwise its failure is the answer;
- at the deadline, every copy in flight is cancelled and the answer is DEADLINE_EXCEEDED.
Non-idempotent models never hedge; they are retried only on UNAVAILABLE, which the fabric says
only of requests that cannot have run (a copy that may have run fails ABORTED).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fabric import errors

from .fabric_client import Reply
from .policy import LatencyTracker, ModelPolicy
from .resilience import RetryBudget, RetryPolicy

DEADLINE_REPLY = Reply(errors.DEADLINE_EXCEEDED, "deadline exceeded waiting for a worker", None)
NOT_A_HEDGE = -1


@dataclass(slots=True)
class Send:
    attempt: int
    hedge_of: int  # attempt number of the copy this one hedges, or NOT_A_HEDGE
    retry: int  # 0 on the first round, k on the k-th retry


@dataclass(slots=True)
class Cancel:
    attempt: int


@dataclass(slots=True)
class Finish:
    reply: Reply


Action = Send | Cancel | Finish
# Not frozen: a frozen dataclass's __init__ costs several times more, and a Finish is made
# for every call. Nothing mutates an action once made.

_FIRST = (Send(0, NOT_A_HEDGE, 0),)  # the common first batch, shared by every call
_NOTHING: tuple[Action, ...] = ()
_OK = errors.OK


class AttemptPlanner:
    """One call's attempts. ``live`` lists the attempts in flight, oldest first; ``hedge_at``
    and ``retry_at`` are both None when nothing is due before the deadline (``give_up``), which
    lets the shell wait on a single copy with nothing but a deadline timer.
    """

    __slots__ = (
        "_budget",
        "_first",
        "_policy",
        "_retry_policy",
        "_rng",
        "_round_failed",
        "_started",
        "_tracker",
        "failed",
        "finished",
        "give_up",
        "hedge_at",
        "live",
        "retries",
        "retry_at",
        "sent",
    )

    def __init__(
        self,
        policy: ModelPolicy,
        tracker: LatencyTracker,
        retry_policy: RetryPolicy,
        budget: RetryBudget,
        give_up: float,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._tracker = tracker
        self._retry_policy = retry_policy
        self._budget = budget
        self._rng = rng
        self._started = 0.0
        self.give_up = give_up
        self.live: list[int] = []
        self.sent = 0
        self._first = 0  # the current round's first copy
        self._round_failed: Reply | None = None
        self.failed: Reply | None = None  # the last failed round's answer
        self.retries = 0
        self.hedge_at: float | None = None
        self.retry_at: float | None = None
        self.finished = False

    def start(self, now: float) -> tuple[Action, ...]:
        """The first try; ``now`` also starts the latency recorded on success."""
        self._started = now
        self._budget.on_request()
        hedge_s = self._tracker.hedge_delay_s(self._policy)
        if hedge_s is not None:
            self._arm_hedge(hedge_s, now)
        self.sent = 1
        self.live.append(0)
        return _FIRST

    def on_reply(self, attempt: int, reply: Reply, now: float) -> tuple[Action, ...]:
        """A copy answered, or could not be sent (``reply`` then says why)."""
        if self.finished or attempt not in self.live:
            return _NOTHING  # a copy already cancelled, or an answer already given
        live = self.live
        live.remove(attempt)
        if reply.status == _OK:
            self._tracker.observe(now - self._started)
            if live or self.hedge_at is not None:
                return self._finish(reply)
            self.finished = True  # the common answer, without _finish's bookkeeping
            return (Finish(reply),)
        if self._round_failed is None or attempt == self._first:
            self._round_failed = reply
        if self.live:
            return _NOTHING  # another copy may still succeed
        self.hedge_at = None
        self.failed = self._round_failed
        return self._after_failure(self._round_failed, now)

    def on_timer(self, now: float) -> tuple[Action, ...]:
        """``next_wakeup()`` has come: the deadline, the end of a backoff, or a hedge delay."""
        if self.finished:
            return _NOTHING
        if now >= self.give_up:
            return self._finish(DEADLINE_REPLY)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return self._round(now)
        if self.hedge_at is not None and now >= self.hedge_at:
            self.hedge_at = None
            if self._budget.try_spend():
                return (self._send(self._first),)
        return _NOTHING

    def next_wakeup(self) -> float:
        """When ``on_timer`` must be called next (the deadline at the latest)."""
        wake = self.give_up
        if self.retry_at is not None and self.retry_at < wake:
            wake = self.retry_at
        if self.hedge_at is not None and self.hedge_at < wake:
            wake = self.hedge_at
        return wake

    # ---- internals ------------------------------------------------------------------------
    def _send(self, hedge_of: int) -> Send:
        attempt = self.sent
        self.sent += 1
        self.live.append(attempt)
        return Send(attempt, hedge_of, self.retries)

    def _round(self, now: float) -> tuple[Action, ...]:
        """A retry: a fresh copy, hedged like the first try."""
        self._round_failed = None
        self._first = self.sent
        hedge_s = self._tracker.hedge_delay_s(self._policy)
        if hedge_s is not None:
            self._arm_hedge(hedge_s, now)
        return (self._send(NOT_A_HEDGE),)

    def _arm_hedge(self, hedge_s: float, now: float) -> None:
        # Never for non-idempotent models, and a hedge due after the deadline is no hedge.
        if self._policy.idempotent and hedge_s < self.give_up - now:
            self.hedge_at = now + hedge_s

    def _after_failure(self, failed: Reply, now: float) -> tuple[Action, ...]:
        remaining = self.give_up - now
        if not self._retry_policy.should_retry(failed.status, self.retries, remaining):
            return self._finish(failed)
        if not self._budget.try_spend():
            return self._finish(failed)
        self.retries += 1
        self.retry_at = now + self._retry_policy.backoff_s(self.retries, remaining, self._rng)
        return _NOTHING

    def _finish(self, reply: Reply) -> tuple[Action, ...]:
        self.finished = True
        if self.hedge_at is not None or self.retry_at is not None:
            self.hedge_at = self.retry_at = None
        if not self.live:
            return (Finish(reply),)
        actions: list[Action] = [Cancel(a) for a in self.live]
        self.live.clear()
        actions.append(Finish(reply))
        return tuple(actions)
