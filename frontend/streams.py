"""ModelStreamInfer: many requests over one stream, each answered as soon as it completes.

Bounded: at most ``max_pending`` requests in flight plus responses not yet handed to gRPC; at
the bound the stream stops reading requests, so a client that does not read its responses is
held back by HTTP/2 flow control instead of growing this process. A stream with no request
and nothing pending for ``idle_timeout_s`` ends with DEADLINE_EXCEEDED.

A decoupled model's request (``frontend.decoupled``) answers with many responses: each counts
as pending until gRPC took it, and only then is the worker granted credit for another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Protocol

import grpc

from fabric import errors, names
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb

from .decoupled import Part
from .fabric_client import Reply
from .wire import RequestRoute, scan_request, stream_error, stream_response


class Infer(Protocol):
    async def __call__(
        self, route: RequestRoute, payload: bytes, remaining_s: float | None
    ) -> Reply: ...


StreamParts = Callable[[RequestRoute, bytes], AsyncGenerator[Part, None] | None]
"""A decoupled model's responses for a request, or None for any other model."""


class _Finished:
    """Put on a stream's response queue when a decoupled request has sent its last part."""


_FINISHED = _Finished()


class _StreamIdle:
    """Put on a stream's response queue by its idle timer."""


_STREAM_IDLE = _StreamIdle()


async def serve_stream(
    infer: Infer,
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    *,
    max_pending: int,
    idle_timeout_s: float,
    parts: StreamParts | None = None,
) -> AsyncIterator[bytes]:
    """The responses of one ModelStreamInfer, each sent as soon as it completes."""
    limit = max(1, max_pending)
    idle_s = idle_timeout_s
    loop = asyncio.get_running_loop()
    done: asyncio.Queue[bytes | Part | _Finished | _StreamIdle | None] = asyncio.Queue()
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
        nonlocal pending
        try:
            route = scan_request(request)
        except RequestError as exc:
            await done.put(stream_error(exc.message, b""))
            return
        streamed = parts(route, request) if parts is not None else None
        if streamed is not None:
            # aclosing: a stream that ends cancels the request (and its generation) at once.
            async with aclosing(streamed) as each:
                async for part in each:
                    pending += 1  # each part is pending until gRPC took it
                    await done.put(part)
            await done.put(_FINISHED)  # the request itself is no longer pending
            return
        reply = await infer(route, request, None)
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
            if isinstance(item, Part):
                yield item.body
                if item.taken is not None:
                    item.taken()
            elif not isinstance(item, _Finished):
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
