"""``inference.GRPCInferenceService``: inference passes bytes through; metadata comes from the
brokers' catalogs (the model configs workers announced), so it costs no round trip."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from fabric import errors, names
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

from .config import FrontendConfig
from .fabric_client import FabricClient, Reply
from .metrics import RequestMetrics
from .policy import DEFAULT_POLICY, LatencyTracker, ModelPolicy, policy_from_config
from .resilience import RetryBudget, RetryPolicy
from .statistics import merge_statistics
from .status import grpc_code
from .wire import RequestRoute, scan_request, stream_error, stream_response

logger = logging.getLogger(__name__)

SERVER_EXTENSIONS = ("classification", "model_configuration", "model_repository", "statistics")


def _datatype(dt: int) -> str:
    name = mc.DataType.Name(dt)
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


def _version_key(v: str) -> tuple[int, int | str]:
    return (0, int(v)) if v.isdigit() else (1, v)


UNKNOWN_MODEL_LABEL = "<unknown>"
_NO_TRACKER = LatencyTracker(window=1)  # shared by requests for models nobody announced
_DEADLINE_REPLY = Reply(errors.DEADLINE_EXCEEDED, "deadline exceeded waiting for a worker", None)


class _StreamIdle:
    """Put on a stream's response queue by its idle timer."""


_STREAM_IDLE = _StreamIdle()


def _expire(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_result(_DEADLINE_REPLY)


class InferenceService:
    def __init__(self, config: FrontendConfig, client: FabricClient, version: str) -> None:
        self.config = config
        self.client = client
        self.version = version
        self.retry_policy = RetryPolicy(max_retries=config.max_retries)
        self.retry_budget = RetryBudget(ratio=config.retry_budget_ratio)
        self.in_flight = 0
        self.counters = {"retries": 0, "hedges": 0, "rejected": 0}
        self.metrics = RequestMetrics()
        self._latency: dict[str, LatencyTracker] = {}
        self._policies: dict[str, ModelPolicy] = {}
        self._policies_version = -1

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
        return pb.ServerMetadataResponse(
            name=self.config.server_name, version=self.version, extensions=SERVER_EXTENSIONS
        )

    # ---- models ---------------------------------------------------------------------
    def _config(self, name: str, version: str, context: grpc.aio.ServicerContext) -> mc.ModelConfig:
        models = self.client.models()
        versions = {v: (e, n) for (m, v), (e, n) in models.items() if m == name}
        if not versions:
            raise RequestError(errors.NOT_FOUND, f"unknown model {names.quote(name)}")
        if version:
            if version not in versions:
                raise RequestError(
                    errors.NOT_FOUND,
                    f"unknown version {names.quote(version)} of model {names.quote(name)}",
                )
            entry = versions[version][0]
        else:
            ready = [v for v, (_, n) in versions.items() if n > 0] or list(versions)
            entry = versions[max(ready, key=_version_key)][0]
        try:
            return mc.ModelConfig.FromString(entry.config)
        except DecodeError as exc:
            raise RequestError(
                errors.INTERNAL, f"model {names.quote(name)}: bad config announced"
            ) from exc

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            names.check_model(request.name, request.version, "name")
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        models = self.client.models()
        ready = any(
            n > 0
            for (m, v), (_, n) in models.items()
            if m == request.name and (not request.version or v == request.version)
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        config = await self._config_or_abort(request.name, request.version, context)
        known = {v: n for (m, v), (_, n) in self.client.models().items() if m == request.name}
        ready = [v for v, n in known.items() if n > 0]
        versions = sorted(ready or known, key=_version_key)
        batch = [-1] if config.max_batch_size > 0 else []

        def tensors(specs: object) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=_datatype(t.data_type), shape=[*batch, *t.dims]
                )
                for t in specs  # type: ignore[attr-defined]
            ]

        return pb.ModelMetadataResponse(
            name=config.name,
            versions=versions,
            platform=config.platform or config.backend or "pytorch",
            inputs=tensors(config.input),
            outputs=tensors(config.output),
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        config = await self._config_or_abort(request.name, request.version, context)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        out = pb.RepositoryIndexResponse()
        for (name, version), (_, n) in sorted(self.client.models().items()):
            if request.ready and n == 0:
                continue
            out.models.add(
                name=name,
                version=version,
                state="READY" if n > 0 else "UNAVAILABLE",
                reason="" if n > 0 else "no live worker serves this version",
            )
        return out

    async def _config_or_abort(
        self, name: str, version: str, context: grpc.aio.ServicerContext
    ) -> mc.ModelConfig:
        try:
            names.check_model(name, version, "name")
            return self._config(name, version, context)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
            raise  # unreachable: abort raises

    # ---- inference --------------------------------------------------------------------
    def _policy(self, model: str) -> ModelPolicy:
        if self._policies_version != self.client.catalog_version:
            latest: dict[str, tuple[str, bytes]] = {}
            for (name, version), (entry, _) in self.client.models().items():
                if name not in latest or _version_key(version) > _version_key(latest[name][0]):
                    latest[name] = (version, entry.config)
            self._policies = {}
            for name, (_, config) in latest.items():
                try:
                    self._policies[name] = policy_from_config(mc.ModelConfig.FromString(config))
                except DecodeError:  # a bad announcement must not break the other models
                    logger.warning("model %s: undecodable config announced; default policy", name)
                    self._policies[name] = DEFAULT_POLICY
            self._policies_version = self.client.catalog_version
        return self._policies.get(model, DEFAULT_POLICY)

    async def infer(self, route: RequestRoute, payload: bytes, remaining_s: float | None) -> Reply:
        """One request through the fabric: admission, deadline, retries within the deadline
        and the retry budget, hedging where the model asks for it."""
        policy = self._policy(route.model)
        if route.model not in self._policies or (
            route.version and not names.valid_version(route.version)
        ):
            # Announced names are directories of a worker's repository; any other name is
            # checked here, before it becomes a key, a label or part of a message.
            try:
                names.check_model(route.model, route.version)
            except RequestError as exc:
                return Reply(exc.code, exc.message, None)
        timeout_s = policy.default_timeout_s or self.config.default_timeout_s
        if remaining_s is not None:
            timeout_s = min(timeout_s, remaining_s)
        if timeout_s <= 0:
            return Reply(errors.DEADLINE_EXCEEDED, "deadline passed before dispatch", None)
        if self.in_flight >= self.config.max_in_flight:
            self.counters["rejected"] += 1
            return Reply(
                errors.RESOURCE_EXHAUSTED,
                f"frontend at capacity ({self.config.max_in_flight} requests in flight)",
                None,
            )
        self.in_flight += 1
        start = time.monotonic()
        status = errors.CANCELLED
        # Per-model state only for models some broker announced: client-chosen names must
        # not grow memory or metric labels.
        known = route.model in self._policies
        try:
            reply = await self._attempts(route, payload, policy, timeout_s, known)
            status = reply.status
            return reply
        finally:
            self.in_flight -= 1
            label = route.model if known else UNKNOWN_MODEL_LABEL
            self.metrics.observe(label, status, time.monotonic() - start)

    async def _attempts(
        self,
        route: RequestRoute,
        payload: bytes,
        policy: ModelPolicy,
        timeout_s: float,
        known: bool,
    ) -> Reply:
        start = time.monotonic()
        give_up = start + timeout_s
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        tracker = self._latency.get(route.model) if known else _NO_TRACKER
        if tracker is None:
            tracker = self._latency[route.model] = LatencyTracker()
        self.retry_budget.on_request()
        attempt = 0
        while True:
            reply = await self._attempt(route, payload, policy, deadline_ns, give_up, tracker)
            if reply.status == errors.OK:
                tracker.observe(time.monotonic() - start)
                return reply
            remaining = give_up - time.monotonic()
            if not self.retry_policy.should_retry(reply.status, attempt, remaining):
                return reply
            if not self.retry_budget.try_spend():
                return reply
            attempt += 1
            self.counters["retries"] += 1
            logger.debug(
                "retrying %s id=%r after %s (attempt %d)",
                route.model,
                route.id,
                reply.message,
                attempt,
            )
            await asyncio.sleep(self.retry_policy.backoff_s(attempt, remaining))

    async def _attempt(
        self,
        route: RequestRoute,
        payload: bytes,
        policy: ModelPolicy,
        deadline_ns: int,
        give_up: float,
        tracker: LatencyTracker,
    ) -> Reply:
        """One try, plus a hedged copy when the first is slow; the first good reply wins."""
        client = self.client
        try:
            first_id, first, _ = client.submit(
                route.model, route.version, deadline_ns, payload, flags=policy.flags
            )
        except RequestError as exc:
            return Reply(exc.code, exc.message, None)
        hedge_s = tracker.hedge_delay_s(policy)
        if hedge_s is None:
            # The common path: one future, one timer handle; no asyncio.wait machinery.
            timer = asyncio.get_running_loop().call_later(
                max(0.0, give_up - time.monotonic()), _expire, first
            )
            try:
                return await first
            finally:
                timer.cancel()
                client.cancel(first_id)  # no-op once its reply arrived
        live = {first: first_id}
        try:
            if hedge_s < give_up - time.monotonic():
                done, _ = await asyncio.wait([first], timeout=hedge_s)
                if not done and self.retry_budget.try_spend():
                    try:
                        hedge_id, hedge, _ = client.submit(
                            route.model,
                            route.version,
                            deadline_ns,
                            payload,
                            flags=policy.flags,
                            hedge_of=first_id,
                        )
                        live[hedge] = hedge_id
                        self.counters["hedges"] += 1
                    except RequestError:
                        pass
            failed: Reply | None = None
            while live:
                done, _ = await asyncio.wait(
                    list(live),
                    timeout=max(0.0, give_up - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    return _DEADLINE_REPLY
                for fut in done:
                    del live[fut]
                    reply = fut.result()
                    if reply.status == errors.OK:
                        return reply
                    if failed is None or fut is first:
                        failed = reply
            assert failed is not None
            return failed
        finally:
            for request_id in live.values():
                client.cancel(request_id)

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            route = scan_request(request)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        reply = await self.infer(route, request, context.time_remaining())
        if reply.status != errors.OK or reply.payload is None:
            await context.abort(grpc_code(reply.status), reply.message or reply.status)
        return reply.payload  # type: ignore[return-value]

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Many requests over one stream; each response is sent as soon as it completes.

        Bounded: at most ``stream_max_pending`` requests in flight plus responses not yet
        handed to gRPC; at the bound the stream stops reading requests, so a client that does
        not read its responses is held back by HTTP/2 flow control instead of growing this
        process. A stream with no request and nothing pending for ``stream_idle_timeout_s``
        ends with DEADLINE_EXCEEDED.
        """
        limit = max(1, self.config.stream_max_pending)
        idle_s = self.config.stream_idle_timeout_s
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[bytes | _StreamIdle | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        space = asyncio.Event()  # set when ``pending`` drops below ``limit``
        pending = 0  # read and not yet handed to gRPC: in flight, or answered and queued
        idle_timer: asyncio.TimerHandle | None = None

        def on_idle() -> None:
            done.put_nowait(_STREAM_IDLE)

        def arm_idle_timer() -> None:
            nonlocal idle_timer
            if idle_s > 0:
                idle_timer = loop.call_later(idle_s, on_idle)

        async def one(request: bytes) -> None:
            try:
                route = scan_request(request)
            except RequestError as exc:
                await done.put(stream_error(exc.message, b""))
                return
            reply = await self.infer(route, request, None)
            if reply.status == errors.OK and reply.payload is not None:
                await done.put(stream_response(reply.payload))
            else:
                echo = pb.ModelInferResponse(
                    model_name=route.model[: names.MAX_MODEL_NAME_CHARS],
                    model_version=route.version[: names.MAX_VERSION_CHARS],
                    id=route.id,
                ).SerializeToString()
                await done.put(stream_error(reply.message or reply.status, echo))

        async def read_all() -> None:
            nonlocal pending
            try:
                async for request in requests:
                    if idle_timer is not None:
                        idle_timer.cancel()
                    pending += 1
                    task = asyncio.create_task(one(request), name="stream-request")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    while pending >= limit:  # the client must read before we read on
                        space.clear()
                        await space.wait()
                while tasks:
                    await asyncio.wait(list(tasks))
            finally:
                done.put_nowait(None)

        arm_idle_timer()
        reader = asyncio.create_task(read_all(), name="stream-reader")
        try:
            while (item := await done.get()) is not None:
                if isinstance(item, _StreamIdle):
                    if pending == 0 and not reader.done():
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"stream idle for {idle_s:g}s (no request, nothing in flight)",
                        )
                    continue  # a request raced the timer: it is busy again
                yield item  # returns once gRPC took the message: flow control applies here
                pending -= 1
                if pending < limit:
                    space.set()
                if pending == 0 and not reader.done():
                    arm_idle_timer()
        finally:
            if idle_timer is not None:
                idle_timer.cancel()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # ---- statistics and repository control ------------------------------------------------
    async def _control(
        self, op: str, model: str, version: str, context: grpc.aio.ServicerContext
    ) -> list[bytes]:
        timeout = self.config.control_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        try:
            replies = await self.client.control(op, model, version, timeout)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        failed = [r for r in replies if r.status != errors.OK]
        if failed:
            await context.abort(grpc_code(failed[0].status), failed[0].message or failed[0].status)
        return [body for r in replies for body in r.bodies]

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            await self._config_or_abort(request.name, request.version, context)
        bodies = await self._control("statistics", request.name, request.version, context)
        return merge_statistics([pb.ModelStatisticsResponse.FromString(b) for b in bodies])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._check_or_abort(request.model_name, context)
        await self._control("load", request.model_name, "", context)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._check_or_abort(request.model_name, context)
        await self._control("unload", request.model_name, "", context)
        return pb.RepositoryModelUnloadResponse()

    async def _check_or_abort(self, model_name: str, context: grpc.aio.ServicerContext) -> None:
        try:
            names.check_model(model_name)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)

    # ---- not offered ------------------------------------------------------------------
    async def unimplemented(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not supported by this server")
