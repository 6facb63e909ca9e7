"""Triton's server-level behaviours that clients depend on: the model control modes, the
restricted-protocol option (``--grpc-restricted-protocol``), version strings as Triton reads
them, and the ServerMetadata answer.

Decisions here are plain functions and small classes; the one piece that touches gRPC is the
interceptor, installed only when some protocol group is restricted (so the per-request path
pays nothing by default).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from fabric import errors
from fabric import triton_errors as texts
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb

from .wire import RequestRoute


class ModelControlMode(enum.Enum):
    """Triton's ``--model-control-mode``: who changes what is loaded."""

    NONE = "none"  # everything in the repository at start; load/unload refused
    POLL = "poll"  # workers follow the repository on disk; load/unload refused
    EXPLICIT = "explicit"  # RepositoryModelLoad / RepositoryModelUnload do it


MODEL_CONTROL_MODES = tuple(m.value for m in ModelControlMode)


def control_refusal(mode: str) -> str | None:
    """Triton's text for a load or unload in ``mode`` (UNAVAILABLE); None when allowed."""
    return None if mode == ModelControlMode.EXPLICIT.value else texts.CONTROL_DISABLED


def route_version(route: RequestRoute) -> RequestRoute:
    """``route`` with its version checked as Triton reads version strings (RequestError)."""
    if route.version:
        texts.parse_version(route.version)
    return route


# ---- restricted protocols ------------------------------------------------------------------
# Triton's groups (server docs: "Limit endpoint access") and the RPCs each covers.
PROTOCOL_GROUPS: Mapping[str, frozenset[str]] = {
    "health": frozenset({"ServerLive", "ServerReady", "ModelReady"}),
    "metadata": frozenset({"ServerMetadata", "ModelMetadata"}),
    "inference": frozenset({"ModelInfer", "ModelStreamInfer"}),
    "shared-memory": frozenset(
        {
            "SystemSharedMemoryStatus",
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister",
            "CudaSharedMemoryStatus",
            "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister",
        }
    ),
    "model-config": frozenset({"ModelConfig"}),
    "model-repository": frozenset(
        {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    ),
    "statistics": frozenset({"ModelStatistics"}),
    "trace": frozenset({"TraceSetting"}),
    "logging": frozenset({"LogSettings"}),
}


@dataclass(frozen=True)
class Restriction:
    header: str  # the gRPC metadata key a call must carry, "triton-grpc-protocol-<key>"
    value: str


def parse_restrictions(spec: str) -> dict[str, Restriction]:
    """``"model-repository,statistics:admin-key=secret;inference:k=v"`` (Triton's flag value,
    several separated by ";") as {RPC method name: Restriction}. Raises ValueError."""
    out: dict[str, Restriction] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        groups, sep, kv = part.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or not key.strip():
            raise ValueError(
                f"--grpc-restricted-protocol {part!r}: expected <protocols>:<key>=<value>"
            )
        restriction = Restriction(texts.RESTRICTED_HEADER_PREFIX + key.strip().lower(), value)
        for group in (g.strip() for g in groups.split(",")):
            if group not in PROTOCOL_GROUPS:
                raise ValueError(
                    f"--grpc-restricted-protocol: unknown protocol {group!r} "
                    f"(one of {', '.join(PROTOCOL_GROUPS)})"
                )
            for method in PROTOCOL_GROUPS[group]:
                if method in out:
                    raise ValueError(f"--grpc-restricted-protocol: {group!r} given twice")
                out[method] = restriction
    return out


def restriction_problem(
    restriction: Restriction | None, metadata: Sequence[tuple[str, str | bytes]]
) -> str | None:
    """Triton's text when a call lacks its group's header or value; None when it may run."""
    if restriction is None:
        return None
    for key, value in metadata:
        if key == restriction.header and value == restriction.value:
            return None
    return texts.restricted(restriction.header)


class RestrictedProtocolInterceptor(grpc.aio.ServerInterceptor):
    """Fails calls to a restricted RPC without the header with UNAVAILABLE, as Triton does."""

    def __init__(self, service: str, restrictions: Mapping[str, Restriction]) -> None:
        self._prefix = f"/{service}/"
        self._restrictions = restrictions

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(self._prefix):
            return handler
        restriction = self._restrictions.get(method[len(self._prefix) :])
        problem = restriction_problem(
            restriction,
            tuple(handler_call_details.invocation_metadata or ()),  # type: ignore[attr-defined]
        )
        if problem is None:
            return handler
        return _refusing(handler, problem)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def streaming(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        yield  # unreachable: makes this an async generator, as a streaming handler must be

    deser = handler.request_deserializer
    ser = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, deser, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, deser, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, deser, ser)
    return grpc.unary_unary_rpc_method_handler(unary, deser, ser)


def server_metadata_fields(
    server_name: str, version: str, extensions: Sequence[str]
) -> tuple[str, str, list[str]]:
    """ServerMetadata: Triton's name by default (scripts check for "triton"); our own name and
    version in ``version`` and as an extension entry."""
    return server_name, f"fabricserve {version}", [*extensions, f"fabricserve-{version}"]


def check_control(mode: str) -> None:
    problem = control_refusal(mode)
    if problem is not None:
        raise RequestError(errors.UNAVAILABLE, problem)


_STATE_RANK = {"READY": 2, "UNAVAILABLE": 1}


def merge_index(
    catalog: Sequence[tuple[str, str, int]],
    worker_indexes: Sequence[pb.RepositoryIndexResponse],
    ready_only: bool,
) -> pb.RepositoryIndexResponse:
    """RepositoryIndex from the brokers' catalog ((name, version, live workers)) and what each
    worker reported (``index`` control op): per version, READY wins over UNAVAILABLE (one
    worker serving it is enough); a model no worker loaded is listed by name alone, as Triton
    lists a model of the repository that is not loaded."""
    best: dict[tuple[str, str], tuple[str, str]] = {}

    def offer(name: str, version: str, state: str, reason: str) -> None:
        held = best.get((name, version))
        if held is None or _STATE_RANK.get(state, 0) > _STATE_RANK.get(held[0], 0):
            best[(name, version)] = (state, reason)

    for name, version, workers in catalog:
        if workers > 0:
            offer(name, version, "READY", "")
        else:
            offer(name, version, "UNAVAILABLE", "no live worker serves this version")
    for index in worker_indexes:
        for m in index.models:
            offer(m.name, m.version, m.state, m.reason)
    versioned = {name for name, version in best if version}
    out = pb.RepositoryIndexResponse()
    for (name, version), (state, reason) in sorted(best.items()):
        if ready_only and state != "READY":
            continue
        if not version and name in versioned:
            continue
        out.models.add(name=name, version=version, state=state, reason=reason)
    return out
