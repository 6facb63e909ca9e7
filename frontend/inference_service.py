"""``inference.GRPCInferenceService``: inference passes bytes through; metadata comes from the
brokers' catalogs (the model configs workers announced), so it costs no round trip."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace

import grpc
from google.protobuf.message import DecodeError

from fabric import errors, names, tracing
from fabric.errors import RequestError
from fabric.versions import version_sort_key
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

from .attempts import DEADLINE_REPLY, NOT_A_HEDGE, Action, AttemptPlanner, Finish, Send
from .byte_admission import ByteBudget
from .config import FrontendConfig
from .decoupled import (
    DECOUPLED_MODEL_INFER,
    NO_SEQUENCE,
    PLAIN,
    ModelTraits,
    Part,
    sequence_fields,
    stream_decoupled,
    traits_of,
)
from .fabric_client import FabricClient, Reply
from .metrics import RequestMetrics, VersionLabels
from .model_rpcs import ModelRpcs
from .policy import DEFAULT_POLICY, LatencyTracker, ModelPolicy, policy_from_config
from .resilience import RetryBudget, RetryPolicy
from .routing.router import Router
from .shm import SharedMemoryRegistry
from .status import grpc_code
from .streams import serve_stream
from .trace_settings import TraceSettings
from .traces import CALL_TRACE, CallTracer, note_resend
from .triton_compat import route_version, server_metadata_fields
from .wire import RequestRoute, scan_request

logger = logging.getLogger(__name__)

SERVER_EXTENSIONS = (
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
    "logging",
    "trace",  # TraceSetting (frontend/trace_settings.py)
)


UNKNOWN_MODEL_LABEL = "<unknown>"
_NO_TRACKER = LatencyTracker(window=1)  # shared by requests for models nobody announced


def _expire(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_result(DEADLINE_REPLY)  # read as "the deadline passed" by _attempts


class InferenceService(ModelRpcs):
    def __init__(self, config: FrontendConfig, client: FabricClient, version: str) -> None:
        self.config = config
        self.client = client
        self.version = version
        self.retry_policy = RetryPolicy(max_retries=config.max_retries)
        self.retry_budget = RetryBudget(ratio=config.retry_budget_ratio)
        self.in_flight = 0
        self.bytes_in_flight = ByteBudget(config.max_in_flight_bytes)
        self.counters = {"retries": 0, "hedges": 0, "rejected": 0, "rejected_bytes": 0}
        self.metrics = RequestMetrics()
        self._latency: dict[str, LatencyTracker] = {}
        self._policies: dict[str, ModelPolicy] = {}
        self._traits: dict[str, ModelTraits] = {}
        self._policies_version = -1
        self.router: Router | None = None  # --routing: public names (frontend.routing)
        self._version_labels = VersionLabels({})
        self.trace_settings = TraceSettings.from_plan(tracing.PLAN)
        self.tracer = CallTracer(self.trace_settings)
        self.shm = SharedMemoryRegistry()  # its RPCs: frontend.shm.SharedMemoryService

    # ---- server ---------------------------------------------------------------------
    def server_ready(self) -> bool:
        return self.client.workers() > 0 and any(n > 0 for _, n in self.client.models().values())

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: object
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: object
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: object
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = server_metadata_fields(
            self.config.server_name, self.version, SERVER_EXTENSIONS
        )
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    # ---- inference --------------------------------------------------------------------
    def _policy(self, model: str) -> ModelPolicy:
        if self._policies_version != self.client.catalog_version:
            latest: dict[str, tuple[str, bytes]] = {}
            for (name, version), (entry, _) in self.client.models().items():
                if name not in latest or version_sort_key(version) > version_sort_key(
                    latest[name][0]
                ):
                    latest[name] = (version, entry.config)
            self._policies = {}
            self._traits = {}
            for name, (_, config) in latest.items():
                try:
                    parsed = mc.ModelConfig.FromString(config)
                    self._policies[name] = policy_from_config(parsed)
                    self._traits[name] = traits_of(parsed)
                except DecodeError:  # a bad announcement must not break the other models
                    logger.warning("model %s: undecodable config announced; default policy", name)
                    self._policies[name] = DEFAULT_POLICY
            self._policies_version = self.client.catalog_version
            self._version_labels = VersionLabels(self.client.models())
        return self._policies.get(model, DEFAULT_POLICY)

    async def infer(self, route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        """One request through the fabric: admission, deadline, retries within the deadline
        and the retry budget, hedging where the model asks for it."""
        policy = self._policy(route.model)
        if route.model not in self._policies or route.version:
            # Announced names are directories of a worker's repository; any other name is
            # checked here, before it becomes a key, a label or part of a message.
            try:
                names.check_model(route.model, route.version)
                route = route_version(route)
            except RequestError as exc:
                return Reply(exc.code, exc.message, None)
        if self.shm.regions:  # region names become the keys the worker maps
            try:
                route = self.shm.resolve(route, payload)
            except RequestError as exc:
                return Reply(exc.code, exc.message, None)
        timeout_s = policy.default_timeout_s or self.config.default_timeout_s
        if remaining_s is not None:
            timeout_s = min(timeout_s, remaining_s)
        if timeout_s <= 0:
            return Reply(errors.DEADLINE_EXCEEDED, "deadline passed before dispatch", None)
        sequence = NO_SEQUENCE
        if self._traits.get(route.model, PLAIN).sequence:
            try:
                sequence = sequence_fields(payload)
            except RequestError as exc:
                return Reply(exc.code, exc.message, None)
            policy = replace(policy, hedge_after_s=None, hedge_p95=False)  # one copy only
        if self.in_flight >= self.config.max_in_flight:
            self.counters["rejected"] += 1
            self._observe(route, errors.RESOURCE_EXHAUSTED, 0.0)
            return Reply(
                errors.RESOURCE_EXHAUSTED,
                f"frontend at capacity ({self.config.max_in_flight} requests in flight)",
                None,
            )
        size = len(payload)
        if not self.bytes_in_flight.admit(size):  # --max-in-flight-bytes (byte_admission.py)
            self.counters["rejected_bytes"] += 1
            self._observe(route, errors.RESOURCE_EXHAUSTED, 0.0)
            return Reply(errors.RESOURCE_EXHAUSTED, self.bytes_in_flight.refusal(size), None)
        self.in_flight += 1
        start = time.monotonic()
        status = errors.CANCELLED
        # Per-model state only for models some broker announced: client-chosen names must
        # not grow memory or metric labels.
        known = route.model in self._policies
        try:
            reply = await self._attempts(route, payload, policy, timeout_s, known, sequence)
            status = reply.status
            return reply
        finally:
            self.in_flight -= 1
            self.bytes_in_flight.release(size)
            self._observe(route, status, time.monotonic() - start)

    def _observe(self, route: RequestRoute, status: str, seconds: float) -> None:
        if route.model in self._policies:
            version = self._version_labels.label(route.model, route.version)
            self.metrics.observe(route.model, version, status, seconds)
        else:  # client-chosen names must not grow the label set
            self.metrics.observe(UNKNOWN_MODEL_LABEL, "", status, seconds)

    async def _attempts(
        self,
        route: RequestRoute,
        payload: bytes,
        policy: ModelPolicy,
        timeout_s: float,
        known: bool,
        sequence: tuple[str, int] = NO_SEQUENCE,
    ) -> Reply:
        """Runs one call's ``AttemptPlanner``: submits, cancels and waits as it says; the
        decisions (retries, backoff, hedging, the deadline) are all the planner's."""
        client = self.client
        now = time.monotonic()
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        trace = CALL_TRACE.get()  # "" unless this call is traced (frontend.traces)
        tracker = self._latency.get(route.model) if known else _NO_TRACKER
        if tracker is None:
            tracker = self._latency[route.model] = LatencyTracker()
        end = now + timeout_s
        planner = AttemptPlanner(policy, tracker, self.retry_policy, self.retry_budget, end)
        # Attempt n is sent[n]: what submit returned, or None when it could not be sent.
        sent: list[tuple[int, asyncio.Future[Reply], object] | None] = []
        loop = asyncio.get_running_loop()
        actions = planner.start(now)
        try:
            while True:
                bounced: Reply | None = None
                for action in actions:
                    if isinstance(action, Send):
                        if not client.gate.open:  # no worker reachable: wait for one (brokers.py)
                            await client.gate.wait(end - time.monotonic())
                        hedge_of = (
                            0 if action.hedge_of == NOT_A_HEDGE else self._hedged_id(action, sent)
                        )
                        try:
                            sent.append(
                                client.submit(
                                    route.model,
                                    route.version,
                                    deadline_ns,
                                    payload,
                                    flags=policy.flags,
                                    hedge_of=hedge_of,
                                    sequence=sequence,
                                    trace=trace,
                                    shm=route.shm,
                                )
                            )
                        except RequestError as exc:
                            sent.append(None)
                            bounced = Reply(exc.code, exc.message, None)
                        else:
                            if action.attempt:
                                self._count_resend(action, route, planner.failed)
                    elif isinstance(action, Finish):
                        return action.reply
                    else:
                        entry = sent[action.attempt]
                        if entry is not None:
                            client.cancel(entry[0])
                if bounced is not None:  # a Send is always last in its batch
                    actions = planner.on_reply(len(sent) - 1, bounced, time.monotonic())
                    continue
                live = planner.live
                if len(live) != 1 or planner.hedge_at is not None or planner.retry_at is not None:
                    actions = await self._next_event(planner, sent, planner.next_wakeup())
                    continue
                wake = planner.give_up
                # The common path, inline: one copy and nothing due before the deadline. One
                # timer handle, no asyncio.wait machinery, no extra coroutine; at the deadline
                # the timer answers the future itself.
                attempt = live[0]
                entry = sent[attempt]
                assert entry is not None  # a copy that could not be sent is never live
                fut = entry[1]
                timer = loop.call_later(max(0.0, wake - time.monotonic()), _expire, fut)
                try:
                    reply = await fut
                finally:
                    timer.cancel()
                if reply is DEADLINE_REPLY:
                    actions = planner.on_timer(max(time.monotonic(), wake))
                else:
                    actions = planner.on_reply(attempt, reply, time.monotonic())
        finally:
            for attempt in planner.live:  # the caller went away mid-call
                entry = sent[attempt]
                if entry is not None:
                    client.cancel(entry[0])

    @staticmethod
    def _hedged_id(
        action: Send, sent: list[tuple[int, asyncio.Future[Reply], object] | None]
    ) -> int:
        """The request id of the copy a hedge duplicates (the fabric sends both to the same
        broker, which keeps them on different workers)."""
        first = sent[action.hedge_of]
        return first[0] if first is not None else 0

    def _count_resend(self, action: Send, route: RequestRoute, failed: Reply | None) -> None:
        if tracing.ENABLED:
            note_resend(
                action.hedge_of != NOT_A_HEDGE, action.retry, failed.status if failed else ""
            )
        if action.hedge_of != NOT_A_HEDGE:
            self.counters["hedges"] += 1
        elif action.retry:
            self.counters["retries"] += 1
            logger.debug(
                "retrying %s id=%r after %s (retry %d)",
                route.model,
                route.id,
                failed.message if failed is not None else "",
                action.retry,
            )

    @staticmethod
    async def _next_event(
        planner: AttemptPlanner,
        sent: list[tuple[int, asyncio.Future[Reply], object] | None],
        wake: float,
    ) -> tuple[Action, ...]:
        """Waits for the first reply of several copies, the end of a backoff or the hedge
        delay, whichever comes first, and hands it to the planner."""
        live = planner.live
        if not live:  # backing off before a retry
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            return planner.on_timer(max(time.monotonic(), wake))
        futures = [entry[1] for a in live if (entry := sent[a]) is not None]
        done, _ = await asyncio.wait(
            futures,
            timeout=max(0.0, wake - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        now = time.monotonic()
        if not done:
            return planner.on_timer(max(now, wake))
        for attempt, fut in zip(list(live), futures, strict=True):
            if fut in done:
                actions = planner.on_reply(attempt, fut.result(), now)
                if actions:  # the call's answer: later replies no longer matter
                    return actions
        return ()

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            route = scan_request(request)
        except RequestError as exc:
            del request  # as below: the abort's traceback must not keep it alive
            await context.abort(grpc_code(exc.code), exc.message)
        if not self.client.gate.open:  # no worker reachable yet (brokers.py BrokerGate)
            await self.client.gate.wait(context.time_remaining())
        self._policy(route.model)  # traits follow the catalog
        if self._traits.get(route.model, PLAIN).decoupled:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, DECOUPLED_MODEL_INFER)
        router = self.router
        if router is not None and route.model not in router.routes:
            router = None
        if tracing.ENABLED:  # the call's span covers the routing decision and every attempt
            infer = self.infer
            if router is not None:
                infer = router.stream_infer(infer, context.invocation_metadata())
            reply = await self.tracer.infer(
                infer, route, request, context.time_remaining(), context.invocation_metadata()
            )
        elif router is not None:
            reply = await router.infer(
                self.infer, route, request, context.time_remaining(), context.invocation_metadata
            )
        else:
            reply = await self.infer(route, request, context.time_remaining())
        if reply.status != errors.OK or reply.payload is None:
            # abort raises, and the exception's traceback keeps this frame and its request
            # alive until the cyclic GC happens to run: a refused 16 MiB call held 16 MiB
            # long after its answer (bench/membound.py). Drop the request first.
            del request
            await context.abort(grpc_code(reply.status), reply.message or reply.status)
        payload = reply.payload
        # A large reply arrives as a view of ZeroMQ's buffer; grpc sends only bytes.
        return payload if type(payload) is bytes else bytes(payload)  # type: ignore[arg-type]

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Many requests over one stream, bounded (see ``frontend.streams``)."""
        if not self.client.gate.open:
            await self.client.gate.wait(context.time_remaining())
        infer = self.infer
        if self.router is not None:
            infer = self.router.stream_infer(infer, context.invocation_metadata())
        if tracing.ENABLED:
            infer = self.tracer.bind(infer, context.invocation_metadata(), "ModelStreamInfer")
        async for response in serve_stream(
            infer,
            requests,
            context,
            max_pending=self.config.stream_max_pending,
            idle_timeout_s=self.config.stream_idle_timeout_s,
            parts=self._decoupled_parts,
        ):
            yield response

    def _decoupled_parts(
        self, route: RequestRoute, payload: bytes
    ) -> AsyncGenerator[Part, None] | None:
        """A decoupled model's responses to one stream request; None for other models."""
        policy = self._policy(route.model)
        if not self._traits.get(route.model, PLAIN).decoupled:
            return None
        timeout_s = policy.default_timeout_s or self.config.default_timeout_s
        return stream_decoupled(self.client, route, payload, timeout_s)
