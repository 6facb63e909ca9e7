"""Model names and versions as every tier accepts them, and how error texts quote a value.

A name comes from a client (frontend), off the wire (broker, worker) or from a directory
(worker repository). All tiers apply the same rule before a name is used as a key, a metric label
or a path component: bounded length, printable, no path separator, no NUL, not ``.`` or ``..``.
Error texts quote client values through ``quote`` so that no message echoes megabytes back.
"""

from __future__ import annotations

from fabric import errors
from fabric.errors import RequestError

MAX_MODEL_NAME_CHARS = 256
MAX_VERSION_CHARS = 64
QUOTE_MAX_CHARS = 64
"""Longest part of a client value an error message repeats."""

_FORBIDDEN = ("/", "\\")  # path separators; NUL and other controls fail isprintable()


def quote(value: str, limit: int = QUOTE_MAX_CHARS) -> str:
    """``value`` in quotes for an error text: control characters escaped, at most ``limit``
    characters of it, and its length when cut (a message stays short whatever the client sent)."""
    shown = repr(value[:limit])
    if len(value) > limit:
        return f"{shown}... ({len(value)} chars)"
    return shown


def name_problem(value: str, max_chars: int = MAX_MODEL_NAME_CHARS) -> str | None:
    """Why ``value`` is not an acceptable model name or version; None when it is.

    An empty value is acceptable here (it means "any version"); callers that need one say so.
    """
    if len(value) > max_chars:
        return f"longer than {max_chars} characters"
    if not value.isprintable():
        return "has non-printable characters"
    for sep in _FORBIDDEN:
        if sep in value:
            return f"contains {sep!r}"
    if value in (".", ".."):
        return "is a relative path"
    return None


def valid_model_name(name: str) -> bool:
    return bool(name) and name_problem(name, MAX_MODEL_NAME_CHARS) is None


def valid_version(version: str) -> bool:
    return name_problem(version, MAX_VERSION_CHARS) is None


def check_name(field: str, value: str, max_chars: int = MAX_MODEL_NAME_CHARS) -> None:
    """Raise ``RequestError(INVALID_ARGUMENT)`` naming ``field`` when ``value`` is not a valid
    name; the message quotes at most ``QUOTE_MAX_CHARS`` of the value."""
    problem = name_problem(value, max_chars)
    if problem is not None:
        raise RequestError(errors.INVALID_ARGUMENT, f"invalid {field} {quote(value)}: {problem}")


def check_model(name: str, version: str = "", name_field: str = "model_name") -> None:
    """Validate a (model, version) pair as it arrives; ``version`` may be empty."""
    if not name:
        raise RequestError(errors.INVALID_ARGUMENT, f"{name_field} is required")
    check_name(name_field, name, MAX_MODEL_NAME_CHARS)
    if version:
        check_name("model_version", version, MAX_VERSION_CHARS)
