"""Sequence and decoupled requests in the frontend: which models are which, the sequence fields
a request carries, and the responses of a decoupled request as they stream in.

- ``ModelTraits`` come from the config a model's workers announced (``sequence_batching``,
  ``model_transaction_policy.decoupled``); other models cost nothing more per request.
- A sequence model's request names its sequence in Triton's parameters ``sequence_id``
  (uint64 or string; 0 and "" mean none), ``sequence_start`` and ``sequence_end``; they go
  into the routing header for the broker to pin the sequence to one worker.
- A decoupled model's request answers with any number of responses: ``stream_decoupled``
  yields each as a ``Part`` to send on the stream; once gRPC took it, ``Part.taken`` grants
  the worker credit for one more (so a reader that does not read holds the worker back,
  ``worker.decoupled``). At the deadline, or when the caller goes away, the request is
  cancelled and its generation stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from fabric import errors, names
from fabric.errors import RequestError
from fabric.protocol import SEQUENCE_END, SEQUENCE_START, SEQUENCE_STRING_ID
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

from .fabric_client import FabricClient, Reply
from .wire import RequestRoute, stream_error, stream_response

DECOUPLED_MODEL_INFER = "ModelInfer RPC doesn't support models with decoupled transaction policy"
"""Triton's text (status UNIMPLEMENTED) for ModelInfer on a decoupled model."""
NO_SEQUENCE = ("", 0)
MAX_SEQUENCE_ID_CHARS = 256


@dataclass(frozen=True)
class ModelTraits:
    sequence: bool = False
    decoupled: bool = False


PLAIN = ModelTraits()


def traits_of(config: mc.ModelConfig) -> ModelTraits:
    return ModelTraits(
        sequence=config.HasField("sequence_batching"),
        decoupled=config.model_transaction_policy.decoupled,
    )


def sequence_fields(payload: bytes) -> tuple[str, int]:
    """(correlation id, ``SEQUENCE_*`` flags) of a serialized ModelInferRequest; ("", 0) when
    it names no sequence. Raises ``RequestError``. Parses the request: only sequence models'
    requests come here."""
    try:
        request = pb.ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise RequestError(errors.INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}") from exc
    params = request.parameters
    if "sequence_id" not in params:
        return NO_SEQUENCE
    param = params["sequence_id"]
    which = param.WhichOneof("parameter_choice")
    flags = 0
    if which == "string_param":
        sequence = param.string_param
        flags |= SEQUENCE_STRING_ID
        if len(sequence) > MAX_SEQUENCE_ID_CHARS:
            raise RequestError(
                errors.INVALID_ARGUMENT,
                f"sequence_id is longer than {MAX_SEQUENCE_ID_CHARS} characters",
            )
    elif which in ("int64_param", "uint64_param"):
        value = getattr(param, which)
        if value < 0:
            raise RequestError(errors.INVALID_ARGUMENT, "sequence_id must be unsigned")
        sequence = str(value) if value else ""
    else:
        raise RequestError(
            errors.INVALID_ARGUMENT, "sequence_id must be an unsigned integer or a string"
        )
    if not sequence:
        return NO_SEQUENCE
    for key, flag in (("sequence_start", SEQUENCE_START), ("sequence_end", SEQUENCE_END)):
        if key in params and params[key].bool_param:
            flags |= flag
    return sequence, flags


@dataclass(frozen=True, slots=True)
class Part:
    """One ModelStreamInferResponse to send; ``taken`` is called once gRPC took it."""

    body: bytes
    taken: Callable[[], None] | None = None


def echo(route: RequestRoute) -> bytes:
    """The failed request's model, version and id, as a stream error carries them."""
    return pb.ModelInferResponse(
        model_name=route.model[: names.MAX_MODEL_NAME_CHARS],
        model_version=route.version[: names.MAX_VERSION_CHARS],
        id=route.id,
    ).SerializeToString()


async def stream_decoupled(
    client: FabricClient, route: RequestRoute, payload: bytes, timeout_s: float
) -> AsyncGenerator[Part, None]:
    """The responses of one decoupled request, as they come; the last ends the request (an
    error, or the empty final response when the request asked for one)."""
    parts: asyncio.Queue[tuple[Reply, bool]] = asyncio.Queue()
    give_up = time.monotonic() + timeout_s
    try:
        request_id, _, _ = client.submit(
            route.model,
            route.version,
            time.time_ns() + int(timeout_s * 1e9),
            payload,
            on_part=lambda reply, more: parts.put_nowait((reply, more)),
        )
    except RequestError as exc:
        yield Part(stream_error(exc.message, echo(route)))
        return
    finished = False
    try:
        while True:
            try:
                reply, more = await asyncio.wait_for(
                    parts.get(), max(0.0, give_up - time.monotonic())
                )
            except TimeoutError:
                yield Part(stream_error("deadline exceeded while streaming responses", echo(route)))
                return
            if more and reply.payload is not None:
                yield Part(stream_response(reply.payload), lambda: client.credit(request_id, 1))
                continue
            finished = True
            if reply.status != errors.OK:
                yield Part(stream_error(reply.message or reply.status, echo(route)))
            elif reply.payload is not None:  # the empty final response, when asked for
                yield Part(stream_response(reply.payload))
            return
    finally:
        if not finished:  # deadline, or the caller went away: stop the generation
            client.cancel(request_id)
