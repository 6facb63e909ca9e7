"""Triton's error texts, in one place, for every tier that fails a request the way Triton does.

Clients, scripts and tests written for Triton match on these texts (``assertIn``, ``grep``), so
they are kept word for word, including Triton's odd spacing. Each template names the Triton
source file it comes from (github.com/triton-inference-server, repositories ``core`` and
``server``). Codes are our wire status names (``fabric.errors``); where ours differ from Triton's
the template says so and why.

The frontend uses the model and version texts, the worker the input texts; neither tier imports
the other, so the templates live in ``fabric``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fabric import errors
from fabric.errors import RequestError

# ---- model and version lookup: core src/model_repository_manager/model_lifecycle.cc (GetModel),
# prefixed by ModelRepositoryManager::GetModel (model_repository_manager.cc). ----------------------
_UNKNOWN = "Request for unknown model: "


def unknown_model(model: str) -> str:
    # Triton answers INVALID_ARGUMENT for a name it never saw (FindModelIdentifier) and NOT_FOUND
    # for a known one that is not loaded, with this same text; we answer NOT_FOUND for both, as
    # the KServe v2 protocol says, so a client need not tell the two apart.
    return f"{_UNKNOWN}'{model}' is not found"


def unknown_version(model: str, version: str) -> str:
    return f"{_UNKNOWN}'{model}' version {version} is not found"


def no_available_versions(model: str) -> str:
    """A model Triton knows whose versions are all unloaded or failed (NOT_FOUND)."""
    return f"{_UNKNOWN}'{model}' has no available versions"


def version_not_ready(model: str, version: str) -> str:
    """A version that is loading or unloading (UNAVAILABLE)."""
    return f"{_UNKNOWN}'{model}' version {version} is not at ready state"


# ---- version strings: server src/common.cc (GetModelVersionFromString) --------------------------


def parse_version(version: str) -> str:
    """``version`` as a version number: empty (latest) or the decimal digits of a non-negative
    integer; raises ``RequestError(INVALID_ARGUMENT)`` with Triton's texts otherwise.

    Triton parses with ``std::stol``, which also reads "01", "+1", " 1" or "1abc" as 1; we take
    only canonical digits (every version we serve is a directory named by its number, so any
    other spelling names none of them), and refuse the rest with the text Triton gives for a
    string ``stol`` cannot read.
    """
    if not version:
        return version
    if version.startswith("-") and _canonical(version[1:]) and version != "-0":
        raise RequestError(
            errors.INVALID_ARGUMENT,
            f"invalid model version specified '{version}' , version should be an integral "
            "value > 0",
        )
    if not _canonical(version):
        raise RequestError(
            errors.INVALID_ARGUMENT,
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0",
        )
    return version


def _canonical(digits: str) -> bool:
    return (
        digits.isascii()
        and digits.isdigit()
        and len(digits) <= 18  # fits an int64, as stol needs
        and (digits == "0" or not digits.startswith("0"))
    )


# ---- inputs and outputs: core src/infer_request.cc (Normalize, ValidateRequestInputs), -----------
# core src/model.cc (GetInput, GetOutput), server src/grpc/infer_handler.cc (InferGRPCToInput).


def request_prefix(request_id: str) -> str:
    """Triton's ``LogRequest()``: texts about a request with an id start with it."""
    return f"[request id: {request_id}] " if request_id else ""


def _names(names: Iterable[str]) -> str:
    # Triton joins with "," and no space: ['INPUT0','INPUT1'].
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def input_count(model: str, expected: int, given: Sequence[str], missing: Sequence[str]) -> str:
    return (
        f"expected {expected} inputs but got {len(given)} inputs for model '{model}'. "
        f"Got input(s) {_names(given)}, but missing required input(s) {_names(missing)}. "
        "Please provide all required input(s)."
    )


def unexpected_input(name: str, model: str) -> str:
    return f"unexpected inference input '{name}' for model '{model}'"


def unexpected_output(name: str, model: str) -> str:
    return f"unexpected inference output '{name}' for model '{model}'"


def input_datatype(name: str, model: str, given: str, expected: str) -> str:
    return (
        f"inference input '{name}' data-type is '{given}', but model '{model}' expects '{expected}'"
    )


def _dims(dims: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def input_shape(name: str, model: str, expected: Sequence[int], given: Sequence[int]) -> str:
    """``expected`` is the config's dims with -1 in front for a batching model."""
    return (
        f"unexpected shape for input '{name}' for model '{model}'. Expected "
        f"{_dims(expected)}, got {_dims(given)}"
    )


def no_batch_dim(name: str, model: str) -> str:
    return f"input '{name}' has no shape but model requires batch dimension for '{model}'"


def batch_mismatch(name: str, model: str) -> str:
    return f"input '{name}' batch size does not match other inputs for '{model}'"


def batch_too_large(max_batch_size: int, model: str) -> str:
    return f"inference request batch-size must be <= {max_batch_size} for '{model}'"


def input_byte_size(name: str, model: str, expected: int, given: int) -> str:
    return (
        f"input byte size mismatch for input '{name}' for model '{model}'. "
        f"Expected {expected}, got {given}"
    )


def bytes_count(name: str, model: str, expected: int, given: int) -> str:
    """Fewer BYTES elements than the shape says (ValidateBytesInputs)."""
    return (
        f"expected {expected} string elements for inference input '{name}' for model "
        f"'{model}', got {given}"
    )


def contents_and_raw(name: str, model: str) -> str:
    return (
        f"contents field must not be specified when using raw_input_contents for '{name}' "
        f"for model '{model}'"
    )


def no_input_data(name: str, model: str) -> str:
    return f"unable to find data for input tensor '{name}' for model '{model}' in request."


def typed_datatype(name: str, model: str, given: str, expected: str) -> str:
    """Typed ``contents`` of the wrong field for the tensor's datatype."""
    return (
        f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of "
        f"type '{given}', expected datatype '{expected}'"
    )


# ---- model control: core src/model_repository_manager/model_repository_manager.cc ----------------
CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"
"""Load or unload while the model control mode is ``none`` or ``poll`` (UNAVAILABLE)."""


def load_failed_no_version(model: str) -> str:
    return f"failed to load '{model}', no version is available"


def version_unavailable(version: str, reason: str) -> str:
    """One version's part of a failed load (model_lifecycle.cc, OnLoadComplete)."""
    return f"version {version} is at UNAVAILABLE state: {reason};"


def load_failed(model: str, versions: Iterable[str]) -> str:
    """A failed load (INVALID_ARGUMENT): ``versions`` from ``version_unavailable``
    (model_repository_manager.cc, LoadModels)."""
    return f"load failed for model '{model}': " + "".join(versions)


# ---- restricted protocols: server src/grpc/grpc_handler.h, infer_handler.cc (UNAVAILABLE) --------
RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"


def restricted(header: str) -> str:
    return f"This protocol is restricted, expecting header '{header}'"
