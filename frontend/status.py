"""The one place wire status names become gRPC status codes."""

from __future__ import annotations

import grpc

from fabric import errors

_CODES: dict[str, grpc.StatusCode] = {
    errors.OK: grpc.StatusCode.OK,
    errors.CANCELLED: grpc.StatusCode.CANCELLED,
    errors.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    errors.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    errors.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ABORTED: grpc.StatusCode.ABORTED,
    errors.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    errors.INTERNAL: grpc.StatusCode.INTERNAL,
    errors.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(status: str) -> grpc.StatusCode:
    return _CODES.get(status, grpc.StatusCode.INTERNAL)
