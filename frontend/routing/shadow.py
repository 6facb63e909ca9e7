"""Shadow copies: a request's copy sent to a shadow target after the primary, its reply
compared with the primary's and counted, never returned.

A shadow never touches the client's call: it is sent from its own task once the primary is
on its way, it is not retried, it does not count against the frontend's in-flight budget
(``--max-in-flight``), and it has its own small bound. It is dropped first: when that bound
is reached, or when the frontend's primary traffic is past half its budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from google.protobuf.message import DecodeError

from fabric import errors
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb

from ..fabric_client import Reply
from .config import Shadow
from .metrics import RoutingMetrics, TargetCounters
from .table import RouteState

logger = logging.getLogger(__name__)

SHADOW_MAX_IN_FLIGHT = 8  # shadow copies awaiting a reply, per frontend
SHADOW_LOAD_LIMIT = 0.5  # frontend load (in flight / budget) above which shadows are dropped

_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


class Submitter(Protocol):
    def submit(
        self, model: str, version: str, deadline_ns: int, payload: bytes
    ) -> tuple[int, asyncio.Future[Reply], object]: ...

    def cancel(self, request_id: int) -> None: ...


def outputs_match(primary: bytes, shadow: bytes, atol: float) -> bool:
    """Whether two serialized ``ModelInferResponse`` hold the same outputs: the same names,
    datatypes and shapes, numbers within ``atol`` of each other, anything else equal."""
    a, b = pb.ModelInferResponse.FromString(primary), pb.ModelInferResponse.FromString(shadow)
    if len(a.outputs) != len(b.outputs):
        return False
    raw_a, raw_b = a.raw_output_contents, b.raw_output_contents
    index_b = {t.name: i for i, t in enumerate(b.outputs)}
    for i, ta in enumerate(a.outputs):
        j = index_b.get(ta.name)
        if j is None:
            return False
        tb = b.outputs[j]
        if ta.datatype != tb.datatype or list(ta.shape) != list(tb.shape):
            return False
        if len(raw_a) != len(a.outputs) or len(raw_b) != len(b.outputs):
            if ta.contents != tb.contents:  # typed contents: compared exactly
                return False
            continue
        dtype = _DTYPES.get(ta.datatype)
        if dtype is None or atol == 0.0:  # BYTES, or no tolerance: the bytes must agree
            if raw_a[i] != raw_b[j]:
                return False
            continue
        if len(raw_a[i]) != len(raw_b[j]) or len(raw_a[i]) % dtype.itemsize:
            return False
        x = np.frombuffer(raw_a[i], dtype=dtype).astype(np.float64)
        y = np.frombuffer(raw_b[j], dtype=dtype).astype(np.float64)
        if not np.allclose(x, y, rtol=0.0, atol=atol, equal_nan=True):
            return False
    return True


class Shadows:
    def __init__(
        self,
        client: Submitter,
        metrics: RoutingMetrics,
        load: Callable[[], float],
        max_in_flight: int = SHADOW_MAX_IN_FLIGHT,
        load_limit: float = SHADOW_LOAD_LIMIT,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.in_flight = 0
        self._load = load
        self._max_in_flight = max_in_flight
        self._load_limit = load_limit
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        state: RouteState,
        payload: bytes,
        timeout_s: float,
        primary: asyncio.Future[Reply],
        draw: Callable[[], float],
    ) -> None:
        """Sends the shadow copies this request draws, each from its own task (which runs
        after the caller's primary copy has been sent)."""
        for shadow in state.shadows:
            if draw() >= shadow.fraction:
                continue
            c = self.metrics.target(state.name, shadow.model, shadow.version)
            if self.in_flight >= self._max_in_flight or self._load() >= self._load_limit:
                c.shadow["drop"] += 1
                continue
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._run(shadow, c, payload, timeout_s, primary), name="routing-shadow"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        shadow: Shadow,
        c: TargetCounters,
        payload: bytes,
        timeout_s: float,
        primary: asyncio.Future[Reply],
    ) -> None:
        try:
            if primary.done() and primary.result().status == errors.RESOURCE_EXHAUSTED:
                c.shadow["drop"] += 1  # the primary was not even taken: neither is its shadow
                return
            deadline_ns = time.time_ns() + int(timeout_s * 1e9)
            try:
                request_id, fut, _ = self.client.submit(
                    shadow.model, shadow.version, deadline_ns, payload
                )
            except RequestError:
                c.shadow["error"] += 1
                return
            try:
                reply = await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                self.client.cancel(request_id)
                c.shadow["error"] += 1
                return
            if reply.status != errors.OK or reply.payload is None:
                c.shadow["error"] += 1
                return
            first = await primary
            if first.status != errors.OK or first.payload is None:
                return  # nothing to compare with
            try:
                same = outputs_match(bytes(first.payload), bytes(reply.payload), shadow.atol)
            except DecodeError:
                c.shadow["error"] += 1
                return
            c.shadow["match" if same else "mismatch"] += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # a shadow must never take anything down with it
            logger.exception("shadow copy to %s:%s failed", shadow.model, shadow.version)
            c.shadow["error"] += 1
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
