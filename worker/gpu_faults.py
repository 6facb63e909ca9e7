"""What a failed batch means for the device: nothing, an out-of-memory that a smaller batch may
avoid, or a CUDA error that poisoned the context for good.

A device-side assert (an index out of range in an embedding, say), an illegal memory access or
a launch failure leave the CUDA context unusable: every later call on it fails, and only a new
process recovers. torch raises them as ``torch.AcceleratorError`` (a ``RuntimeError``; older
builds a plain ``RuntimeError``) whose text names the CUDA error; TorchScript and our loaders
wrap them, so the whole cause chain is read. Such a worker must stop taking work, fail what it
holds and exit non-zero so that its supervisor starts a fresh one: ``DeviceHealth`` carries
that verdict from the compute thread that saw it to the I/O loop and every instance.

``torch.cuda.OutOfMemoryError`` (``torch.OutOfMemoryError``) leaves the context usable: the
batch step answers it by running the batch in halves, and a single request that still does not
fit gets ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fabric import errors
from fabric.errors import RequestError

logger = logging.getLogger(__name__)

# Texts of CUDA errors that leave the context unusable (cudaErrorAssert, cudaErrorIllegalAddress,
# cudaErrorLaunchFailure, cudaErrorMisalignedAddress, cudaErrorIllegalInstruction, ...).
STICKY_CUDA_ERRORS = (
    "device-side assert triggered",
    "cudaerrorassert",
    "an illegal memory access was encountered",
    "cudaerrorillegaladdress",
    "unspecified launch failure",
    "misaligned address",
    "an illegal instruction was encountered",
    "uncorrectable ecc error",
    "hardware stack error",
)
OOM_TEXTS = ("cuda out of memory", "cuda error: out of memory")
_CHAIN_LIMIT = 16  # causes followed; guards against a cycle


class Fault(enum.Enum):
    NONE = "none"  # the batch's own problem: fail it, go on
    OUT_OF_MEMORY = "out_of_memory"  # retry smaller; RESOURCE_EXHAUSTED for a single request
    POISONED = "poisoned"  # the CUDA context is gone: stop this worker


def classify(exc: BaseException) -> Fault:
    """Read ``exc`` and its causes (``raise ... from``, or raised while handling)."""
    return _find(exc)[0]


def _find(exc: BaseException) -> tuple[Fault, BaseException]:
    """The fault and the exception in the chain that shows it (``exc`` itself for NONE)."""
    seen: BaseException | None = exc
    for _ in range(_CHAIN_LIMIT):
        if seen is None:
            break
        if isinstance(seen, torch.OutOfMemoryError):
            return Fault.OUT_OF_MEMORY, seen
        if isinstance(seen, RuntimeError):  # AcceleratorError, jit's wrapper, plain CUDA errors
            text = str(seen).lower()
            if any(marker in text for marker in STICKY_CUDA_ERRORS):
                return Fault.POISONED, seen
            if any(marker in text for marker in OOM_TEXTS):
                return Fault.OUT_OF_MEMORY, seen
        seen = seen.__cause__ or seen.__context__
    return Fault.NONE, exc


def release_cached_memory() -> None:
    """After an out-of-memory, hand the allocator's cached blocks back so the halves fit."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class DeviceHealth:
    """The worker's verdict on its device, shared by every instance and the I/O loop.

    ``poison`` is called once by the compute thread that met a sticky CUDA error; from then on
    ``poisoned`` holds its text: instances run no more batches (they fail them with it), the
    worker stops announcing, answers what it holds and exits non-zero. Listeners (the I/O
    loop's wake-up) are called on the poisoning thread, outside the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.poisoned: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_poison(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def poison(self, reason: str) -> bool:
        """Record the first sticky error; True for the call that did."""
        with self._lock:
            if self.poisoned is not None:
                return False
            self.poisoned = reason
            listeners = list(self._listeners)
        logger.critical(
            "the CUDA context is unusable (%s): this worker stops taking work and exits", reason
        )
        for listener in listeners:
            listener()
        return True


@dataclass(frozen=True)
class Verdict:
    """How to answer a batch that raised: split it and retry (``split``), or fail each of its
    requests with ``code``/``message``; ``poison`` when the device is gone."""

    split: bool
    code: str
    message: str
    poison: bool = False


def judge(exc: Exception, model: str, requests: int) -> Verdict:
    """The answer to a batch of ``requests`` requests of ``model`` that raised ``exc``."""
    fault, culprit = _find(exc)
    if fault is Fault.OUT_OF_MEMORY:
        if requests > 1:
            return Verdict(True, errors.RESOURCE_EXHAUSTED, "")
        return Verdict(
            False,
            errors.RESOURCE_EXHAUSTED,
            f"model '{model}' ran out of device memory on this request alone: "
            f"{_first_line(culprit)}",
        )
    if fault is Fault.POISONED:
        return Verdict(
            False,
            errors.INTERNAL,
            f"model '{model}' failed with a CUDA error that leaves the device unusable; "
            f"the worker restarts: {_first_line(culprit)}",
            poison=True,
        )
    if isinstance(exc, RequestError):
        return Verdict(False, exc.code, exc.message)
    return Verdict(False, errors.INTERNAL, f"model '{model}' failed: {exc}")


def _first_line(exc: BaseException) -> str:
    """CUDA errors append paragraphs of debugging advice; the first line says what happened."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
