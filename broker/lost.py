"""What the broker counts, and what becomes of a leased request whose worker was lost (a pure
rule, so the dispatcher only carries it out)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fabric import errors
from fabric.protocol import FLAG_NON_IDEMPOTENT

from .queues import Pending


@dataclass
class Counters:
    requests: int = 0
    replies: int = 0
    rejected_full: int = 0
    expired: int = 0
    cancelled: int = 0
    requeued: int = 0
    failed_worker_lost: int = 0
    dropped_replies: int = 0
    refused_announcements: int = 0  # READYs over a bound, refused as a whole
    conflicting_versions: int = 0  # versions refused for one worker: another fixed its config
    by_status: dict[str, int] = field(default_factory=dict)


def lost_lease_failure(item: Pending, servable: bool) -> tuple[str, str] | None:
    """None when ``item`` may go to another worker (``servable``: one serves its model
    version); else the status and message it fails with."""
    if item.sequence:  # never moved: its state lives on the lost worker
        return errors.ABORTED, "the worker holding this request's sequence was lost; start it again"
    if item.streamed:  # half its responses went out
        return errors.ABORTED, "the worker streaming this request's responses was lost"
    may_have_run = item.acked and item.flags & FLAG_NON_IDEMPOTENT
    if may_have_run:  # the model must not run twice: the caller decides
        return (
            errors.ABORTED,
            "the worker running this non-idempotent request was lost; it may have run",
        )
    is_hedge = item.avoid is not None  # its first copy still runs: never requeue a hedge
    if item.attempts < 2 and not is_hedge and servable:
        return None
    return errors.UNAVAILABLE, "the worker serving this request was lost"
