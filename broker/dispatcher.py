"""The broker's decisions, without I/O: admit, queue, dispatch within credit, requeue, expire.

``Dispatcher`` is driven by method calls (one per message or tick) and appends the frames to
send to two outboxes; ``server.py`` flushes them to the sockets. Tests drive it directly.

No message makes the broker answer much more than it was sent: heartbeat answers, catalogs
and DISCONNECTs are rate-limited per peer by ``Answers`` (``answers.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from fabric import errors, messages, names, tracing
from fabric import triton_errors as texts
from fabric.errors import RequestError
from fabric.heartbeat import Liveness
from fabric.prom import QUEUE_WAIT_BUCKETS_S, Buckets
from fabric.protocol import (
    AckHeader,
    CancelHeader,
    ControlHeader,
    ControlReplyHeader,
    CreditHeader,
    Frame,
    HeartbeatHeader,
    ModelAnnouncement,
    PeerId,
    ReplyHeader,
    RequestHeader,
    encode_header,
)

from .answers import Answers
from .controls import ControlFanout, Outbox
from .lost import Counters, lost_lease_failure
from .queues import ModelKey, ModelQueues, Pending, RequestKey, payload_bytes
from .registry import DEFAULT_LIMITS, Announced, AnnounceLimits, Registry, WorkerState
from .route_decider import RouteDecider
from .sequences import SequencePins
from .traces import RequestSpans

logger = logging.getLogger(__name__)

READY_SLACK_BYTES = 64 * 1024
"""READY framing beyond its configs (names, versions, numbers of up to a few hundred models)."""


class Dispatcher:
    def __init__(
        self,
        *,
        max_queued: int,
        max_queued_bytes: int = 0,
        heartbeat_interval_s: float,
        heartbeat_liveness: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        control_timeout_s: float = 120.0,
        limits: AnnounceLimits = DEFAULT_LIMITS,
    ) -> None:
        self._clock = clock
        self._now_ns = wall_clock_ns
        self.registry = Registry(clock, heartbeat_interval_s, heartbeat_liveness, limits)
        self.queues = ModelQueues(max_queued, max_queued_bytes)
        self.leases: dict[RequestKey, Pending] = {}
        self.frontends: dict[PeerId, Liveness] = {}
        self._interval_s = heartbeat_interval_s
        self._liveness = heartbeat_liveness
        self.to_workers: Outbox = []
        self.to_frontends: Outbox = []
        self.controls = ControlFanout(
            self.registry, clock, control_timeout_s, self.to_workers, self.to_frontends
        )
        self.answers = Answers(
            self.registry, heartbeat_interval_s, self.to_workers, self.to_frontends
        )
        self.counters = Counters()
        self.routes = RouteDecider(clock)  # canary outcomes and decisions (route_decider.py)
        self.sequences = SequencePins(clock)
        # Arrival to first dispatch, per model version (broker/metrics.py exports it).
        self.queue_wait: dict[ModelKey, Buckets] = {}
        # Spans of traced requests, only while tracing is on (broker/traces.py).
        self.spans = RequestSpans(wall_clock_ns) if tracing.ENABLED else None

    # ---- frontend side ---------------------------------------------------------------
    def on_request(
        self, frontend: PeerId, header: RequestHeader, header_frame: Frame, payload: Frame
    ) -> None:
        self.counters.requests += 1
        self._frontend_seen(frontend)
        if header.trace and self.spans is not None:
            header_frame = self.spans.start(frontend, header) or header_frame
        rid = header.request_id
        if header.deadline_ns and header.deadline_ns <= self._now_ns():
            self.counters.expired += 1
            self._fail(frontend, rid, errors.DEADLINE_EXCEEDED, "deadline passed before dispatch")
            return
        reg = self.registry
        if not reg.workers:
            self._fail(frontend, rid, errors.UNAVAILABLE, "no worker is connected")
            return
        if header.sequence:
            self._on_sequence(frontend, header, header_frame, payload)
            return
        version = reg.resolve_version(header.model, header.version)
        if version is None:
            self._fail(frontend, rid, errors.NOT_FOUND, texts.unknown_model(header.model))
            return
        key = (header.model, version)
        if key in self.routes.watched and not header.hedge_of:  # a hedge's refusal is no fault
            self.routes.start((frontend, rid), key)
        if not reg.version_known(*key):
            self._fail(
                frontend, rid, errors.NOT_FOUND, texts.unknown_version(header.model, version)
            )
            return
        if not reg.servers(key) and reg.unloaded(*key):  # NOT_FOUND, not retried, as Triton
            gone = (
                texts.unknown_version(header.model, version)
                if header.version
                else texts.no_available_versions(header.model)
            )
            self._fail(frontend, rid, errors.NOT_FOUND, gone)
            return
        if not reg.servers(key):
            self._fail(
                frontend,
                rid,
                errors.UNAVAILABLE,
                f"no live worker serves model {names.quote(header.model)} "
                f"version {names.quote(version)}",
            )
            return
        item = Pending(frontend, rid, key, header.deadline_ns, header.flags, header_frame, payload)
        if header.hedge_of:
            # A hedge is worth sending only to another worker with credit now; never queued.
            first = self.leases.get((frontend, header.hedge_of))
            item.avoid = first.worker if first is not None else None
            if not self._send(item):
                self._fail(frontend, rid, errors.UNAVAILABLE, "no other worker free for a hedge")
            return
        if self.queues.depth(key) == 0 and self._send(item):
            return
        limit = reg.queue_limit(key)
        if limit and self.queues.depth(key) >= limit:
            self.counters.rejected_full += 1
            self._fail(
                frontend,
                rid,
                errors.RESOURCE_EXHAUSTED,
                f"queue of model '{key[0]}' version '{key[1]}' is full ({limit} requests, "
                "max_queue_size)",
            )
            return
        item.queued_at = self._clock()
        if not self.queues.push(item):  # --max-queued or --max-queued-bytes (queues.py)
            self.counters.rejected_full += 1
            reason = self.queues.full(payload_bytes(item))
            self._fail(frontend, rid, errors.RESOURCE_EXHAUSTED, reason)

    def _on_sequence(
        self, frontend: PeerId, header: RequestHeader, header_frame: Frame, payload: Frame
    ) -> None:
        """A request of a sequence goes to the worker its sequence is pinned to, at once."""
        try:
            worker, key = self.sequences.route(header, self.registry)
        except RequestError as exc:
            self._fail(frontend, header.request_id, exc.code, exc.message)
            return
        item = Pending(frontend, header.request_id, key, header.deadline_ns, header.flags,
                       header_frame, payload, sequence=True)  # fmt: skip
        self._send(item, self.registry.workers[worker])

    def on_credit(self, frontend: PeerId, header: CreditHeader) -> None:
        item = self.leases.get((frontend, header.request_id))
        if item is not None and item.worker is not None:
            self.to_workers.append(
                (item.worker, messages.credit(header.request_id, header.responses, frontend))
            )

    def on_cancel(self, frontend: PeerId, header: CancelHeader) -> None:
        rkey = (frontend, header.request_id)
        item = self.leases.get(rkey)
        if item is not None and item.worker is not None:
            self.to_workers.append((item.worker, messages.cancel(header.request_id, frontend)))
            return
        for key in self.queues.waiting_keys():
            if self.queues.remove(key, rkey) is not None:
                self.counters.cancelled += 1
                self.routes.forget(rkey)
                if self.spans is not None:
                    self.spans.finish(rkey, errors.CANCELLED)
                return

    def on_control(self, frontend: PeerId, header: ControlHeader) -> None:
        self._frontend_seen(frontend)
        self.controls.start(frontend, header)

    def on_control_reply(
        self, worker: PeerId, header: ControlReplyHeader, frontend: PeerId
    ) -> None:
        self.controls.reply(worker, header, frontend)

    def on_frontend_heartbeat(self, frontend: PeerId, header: HeartbeatHeader) -> None:
        self._frontend_seen(frontend)
        self.routes.report(frontend, header.routes, header.decisions)
        decisions = self.routes.decisions_for(frontend)
        self.answers.heartbeat(frontend, header.generation, self._clock(), decisions)

    def on_frontend_disconnect(self, frontend: PeerId) -> None:
        self.frontends.pop(frontend, None)
        self.answers.forget(frontend)
        self.routes.forget_frontend(frontend)

    def _frontend_seen(self, frontend: PeerId) -> None:
        live = self.frontends.get(frontend)
        if live is None:
            self.frontends[frontend] = Liveness(self._interval_s, self._liveness, self._clock)
        else:
            live.seen()

    # ---- worker side -------------------------------------------------------------------
    def on_ready(self, worker: PeerId, models: Sequence[ModelAnnouncement]) -> None:
        # Leases on versions the worker stops serving stay: it finishes what it started
        # (a draining worker announces nothing, then replies to everything it holds).
        self.answers.told_to_leave.pop(worker, None)
        valid = [
            m for m in models if names.valid_model_name(m.name) and names.valid_version(m.version)
        ]
        if len(valid) != len(models):
            logger.warning(
                "worker %s announced %d model version(s) with invalid names; ignored",
                worker.hex(),
                len(models) - len(valid),
            )
        self._announced(worker, self.registry.announce(worker, valid))

    def ready_fits(self, worker: PeerId, header_bytes: int) -> bool:
        """Whether a READY of ``header_bytes`` may be decoded at all: one larger than the whole
        catalog may be could never be applied, so it is refused unread (decoding tens of MB
        would stall every other peer)."""
        limit = self.registry.limits.max_catalog_bytes + READY_SLACK_BYTES
        if header_bytes <= limit:
            return True
        why = f"a {header_bytes}-byte READY, larger than the catalog may be ({limit})"
        self._announced(worker, self.registry.refuse(worker, why))
        return False

    def _announced(self, worker: PeerId, result: Announced) -> None:
        if result.refused:
            self.counters.refused_announcements += 1
        self.counters.conflicting_versions += len(result.new_conflicts)
        if not result.changed:
            self._dispatch_for(worker)  # its capacity may have changed
            return
        self._fail_unservable()
        self._broadcast_catalog()
        # Another worker may have taken over a version this one left (see Registry).
        for w in list(self.registry.workers):
            self._dispatch_for(w)

    def on_worker_seen(self, worker: PeerId) -> bool:
        """Any traffic is proof of life; False when the worker is unknown (must re-announce)."""
        state = self.registry.workers.get(worker)
        if state is None:
            self.answers.reannounce_unknown(worker, self._clock())
            return False
        state.liveness.seen()
        return True

    def on_reply(
        self,
        worker: PeerId,
        header: ReplyHeader,
        header_frame: Frame,
        frontend: PeerId,
        payload: Sequence[Frame],
    ) -> None:
        if header.more:  # a decoupled model's response: the request goes on
            item = self.leases.get((frontend, header.request_id))
            if item is not None and item.worker == worker:
                item.streamed = True
                self.to_frontends.append((frontend, messages.reply(header_frame, payload)))
            return
        item = self.leases.pop((frontend, header.request_id), None)
        if item is None or item.worker != worker:
            if item is not None:  # a reply from a previous holder: keep the current lease
                self.leases[(frontend, header.request_id)] = item
            self.counters.dropped_replies += 1
            return
        self._release(worker, item)
        self.counters.replies += 1
        if self.routes.pending:
            self.routes.finish((frontend, header.request_id), header.status)
        if self.spans is not None:
            self.spans.finish((frontend, header.request_id), header.status)
        self.counters.by_status[header.status] = self.counters.by_status.get(header.status, 0) + 1
        self.to_frontends.append((frontend, messages.reply(header_frame, payload)))
        self._dispatch_for(worker)

    def on_ack(self, worker: PeerId, header: AckHeader, frontend: PeerId) -> None:
        item = self.leases.get((frontend, header.request_id))
        if item is not None and item.worker == worker:
            item.acked = True

    def on_worker_disconnect(self, worker: PeerId) -> None:
        self._worker_lost(worker, "left")

    # ---- time ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Purge silent workers and frontends, expire queued work, heartbeat the workers."""
        for worker in self.registry.expired():
            self._worker_lost(worker, "missed its heartbeats")
        now = self._clock()
        for fe in [f for f, live in self.frontends.items() if not live.alive()]:
            del self.frontends[fe]
            self.answers.forget(fe)
            self.routes.forget_frontend(fe)
        self.answers.tick(now)
        self.registry.flush_logs()
        for item in self.queues.expired(self._now_ns()):
            self.counters.expired += 1
            self._fail(
                item.frontend,
                item.request_id,
                errors.DEADLINE_EXCEEDED,
                "deadline passed while queued in the broker",
            )
        self.controls.expire()
        self.routes.tick()
        self.sequences.expire()
        if self.spans is not None:
            self.spans.sweep()
        hb = encode_header(HeartbeatHeader(self.registry.generation, self.registry.incarnation))
        for worker in self.registry.workers:
            self.to_workers.append((worker, messages.heartbeat(hb)))

    # ---- internals ----------------------------------------------------------------------
    def _send(self, item: Pending, target: WorkerState | None = None) -> bool:
        worker = target or self.registry.pick(item.key, item.avoid)
        if worker is None:
            return False
        model = item.key[0]
        worker.in_flight[model] = worker.in_flight.get(model, 0) + 1
        item.worker = worker.identity
        if not item.attempts:
            waits = self.queue_wait.get(item.key)
            if waits is None:
                waits = self.queue_wait[item.key] = Buckets(QUEUE_WAIT_BUCKETS_S)
            if item.queued_at:
                waits.observe(self._clock() - item.queued_at)
            else:  # sent on arrival, the common case: no clock read, no search
                waits.counts[0] += 1
        item.attempts += 1
        item.acked = False
        self.leases[(item.frontend, item.request_id)] = item
        if self.spans is not None:
            self.spans.event((item.frontend, item.request_id), "dispatched", worker.identity)
        self.to_workers.append(
            (worker.identity, messages.request(item.header, item.payload, item.frontend))
        )
        return True

    def _release(self, worker: PeerId, item: Pending) -> None:
        state = self.registry.workers.get(worker)
        if state is not None:
            model = item.key[0]
            state.in_flight[model] = max(0, state.in_flight.get(model, 0) - 1)

    def _dispatch_for(self, worker: PeerId) -> None:
        state = self.registry.workers.get(worker)
        if state is None:
            return
        for key in list(state.versions):
            while state.credit(key[0]) > 0:
                item = self.queues.pop(key)
                if item is None:
                    break
                if item.deadline_ns and item.deadline_ns <= self._now_ns():
                    self.counters.expired += 1
                    self._fail(
                        item.frontend,
                        item.request_id,
                        errors.DEADLINE_EXCEEDED,
                        "deadline passed while queued in the broker",
                    )
                    continue
                if not self._send(item):  # only a requeued hedge avoiding this worker
                    self.queues.push(item, front=True)
                    break

    def _worker_lost(self, worker: PeerId, why: str) -> None:
        state = self.registry.remove(worker)
        if state is None:
            return
        held = sum(1 for item in self.leases.values() if item.worker == worker)
        # A worker that says goodbye holding nothing is an orderly stop, not a warning.
        level = logging.WARNING if held or why != "left" else logging.INFO
        logger.log(level, "worker %s %s; requeueing its %d request(s)", worker.hex(), why, held)
        self.sequences.worker_lost(worker)
        waiting = [
            item
            for rkey, item in list(self.leases.items())
            if item.worker == worker and self._lease_lost(rkey, item)
        ]
        for item in reversed(waiting):  # back to the front, in their original order
            self.queues.push(item, front=True)
        self._fail_unservable()
        self._broadcast_catalog()
        for w in list(self.registry.workers):
            self._dispatch_for(w)

    def undeliverable(self, worker: PeerId, sent: list[list[Frame]], gone: bool) -> None:
        """Requests that could not be handed to ``worker``: when it is gone (the socket no
        longer routes to it) it is dropped at once and all its work requeued elsewhere; when
        its queue is full, these requests are requeued or failed."""
        if gone:
            self._worker_lost(worker, "is unreachable")
            return
        for frames in sent:
            if not messages.is_request(frames):  # only requests need giving back
                continue
            for msg in messages.iter_messages(frames, routed=True):
                if isinstance(msg, messages.Message) and isinstance(msg.header, RequestHeader):
                    rkey = (msg.route, msg.header.request_id)
                    item = self.leases.get(rkey)
                    if item is not None and item.worker == worker and self._lease_lost(rkey, item):
                        self.queues.push(item, front=True)

    def fail_queued(self, code: str, message: str) -> None:
        """Answer every queued request (the broker is stopping)."""
        for key in self.queues.waiting_keys():
            for item in self.queues.drain(key):
                self._fail(item.frontend, item.request_id, code, message)

    def _fail_unservable(self) -> None:
        """Queued requests no remaining worker can serve fail now instead of at deadline."""
        for key in self.queues.waiting_keys():
            if not self.registry.servers(key):
                for item in self.queues.drain(key):
                    self._fail(
                        item.frontend,
                        item.request_id,
                        errors.UNAVAILABLE,
                        f"no live worker serves model '{key[0]}' version '{key[1]}'",
                    )

    def _lease_lost(self, rkey: RequestKey, item: Pending) -> bool:
        """Requeue or fail a request whose worker is gone; True when it must wait in the
        queue (the caller puts it back at the front)."""
        del self.leases[rkey]
        if item.worker is not None:
            self._release(item.worker, item)
        item.worker = None
        failure = lost_lease_failure(item, bool(self.registry.servers(item.key)))
        if failure is None:
            self.counters.requeued += 1
            if self.spans is not None:
                self.spans.event(rkey, "requeued")
            return not self._send(item)
        self.counters.failed_worker_lost += 1
        self._fail(item.frontend, item.request_id, *failure)
        return False

    def reject(self, frontend: PeerId, request_id: int, code: str, message: str) -> None:
        """Answer a request with an error without queueing it."""
        self._fail(frontend, request_id, code, message)

    def _fail(self, frontend: PeerId, request_id: int, code: str, message: str) -> None:
        self.counters.by_status[code] = self.counters.by_status.get(code, 0) + 1
        if self.routes.pending:
            self.routes.finish((frontend, request_id), code)
        if self.spans is not None:
            self.spans.finish((frontend, request_id), code)
        self.to_frontends.append((frontend, messages.reply(ReplyHeader(request_id, code, message))))

    def _broadcast_catalog(self) -> None:
        now = self._clock()
        for fe in self.frontends:
            self.answers.offer_catalog(fe, now)
