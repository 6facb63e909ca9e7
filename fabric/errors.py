"""Status codes carried on the wire, and the error type a tier raises to fail one request.

Codes are gRPC status names so that the worker and broker can say ``INVALID_ARGUMENT`` without
importing grpc; the frontend maps them to ``grpc.StatusCode`` in one place.
"""

from __future__ import annotations

OK = "OK"
CANCELLED = "CANCELLED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
NOT_FOUND = "NOT_FOUND"
ALREADY_EXISTS = "ALREADY_EXISTS"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
ABORTED = "ABORTED"
UNIMPLEMENTED = "UNIMPLEMENTED"
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"

STATUS_CODES = frozenset(
    {
        OK,
        CANCELLED,
        INVALID_ARGUMENT,
        DEADLINE_EXCEEDED,
        NOT_FOUND,
        ALREADY_EXISTS,
        RESOURCE_EXHAUSTED,
        FAILED_PRECONDITION,
        ABORTED,
        UNIMPLEMENTED,
        INTERNAL,
        UNAVAILABLE,
    }
)

RETRYABLE = frozenset({UNAVAILABLE})
"""Failures that say nothing about the request itself: another attempt may succeed."""


class RequestError(Exception):
    """Fails one request with a status code; the process goes on serving the others."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in STATUS_CODES else INTERNAL
        self.message = message

    def __repr__(self) -> str:
        return f"RequestError({self.code}, {self.message!r})"
