"""Turn serialized ``ModelInferRequest`` bytes into validated numpy inputs, and model outputs into
serialized ``ModelInferResponse`` bytes.

This runs once per request, so numeric tensors never go through per-element Python loops:
raw contents become ``np.frombuffer`` views and outputs leave through ``tobytes``; large
requests and responses skip protobuf's copies of raw tensors (``worker.raw_wire``).
Raw data is little-endian, as the KServe v2 protocol says. BYTES tensors travel as elements each
prefixed with a 4-byte little-endian length, and reach models as object arrays of ``bytes``.
Every problem with a request is a ``RequestError(INVALID_ARGUMENT)`` naming the tensor.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from fabric import triton_errors as texts
from fabric.errors import INTERNAL, INVALID_ARGUMENT, RequestError
from fabric.protocol import ShmRef
from protos import grpc_service_pb2 as pb
from worker.classification import check_datatype, classify
from worker.model_config import ModelSpec, TensorSpec
from worker.raw_wire import IN_PLACE_MIN_BYTES, RawParts, split_raw_inputs
from worker.shm import MAPPER, SHM_PARAMETERS, find_ref

logger = logging.getLogger(__name__)

ParameterValue = bool | int | str | float

_LENGTH = struct.Struct("<I")

# Triton datatype → (InferTensorContents field, dtype of that repeated field).
_TYPED_CONTENTS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}

# One datatype per typed-contents field, to name what a client sent in the wrong field.
_FIELD_DATATYPE = {
    "BOOL": _TYPED_CONTENTS["BOOL"],
    "INT32": _TYPED_CONTENTS["INT32"],
    "INT64": _TYPED_CONTENTS["INT64"],
    "UINT32": _TYPED_CONTENTS["UINT32"],
    "UINT64": _TYPED_CONTENTS["UINT64"],
    "FP32": _TYPED_CONTENTS["FP32"],
    "FP64": _TYPED_CONTENTS["FP64"],
    "BYTES": _TYPED_CONTENTS["BYTES"],
}

# core src/infer_request.cc (ValidateBytesInputs); we put the input's name in front of it
_BYTES_OVERRUN = "element byte size indicator exceeds the end of the buffer"


@dataclass(slots=True, eq=False)
class DecodedRequest:
    """A validated request: inputs in config order, and what the response must contain.

    ``outputs`` are the specs of the outputs to return, in config order (all of them when the
    client named none; ``requested_outputs`` is then None). ``batch_size`` is the number of rows
    along dim 0, or 1 for a model without batching (``batched`` False).
    """

    id: str
    model_name: str
    model_version: str
    inputs: dict[str, np.ndarray]
    batch_size: int
    batched: bool
    requested_outputs: tuple[str, ...] | None
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    # output name -> (class count, labels): outputs to return as top-k classes (see
    # ``worker.classification``); None when no output asked for that.
    classification: dict[str, tuple[int, tuple[str, ...]]] | None = None
    shm_outputs: dict[str, ShmRef] = field(default_factory=dict)  # written to shared memory


def decode_request(
    data: bytes | memoryview, spec: ModelSpec, shm: Sequence[ShmRef] = ()
) -> DecodedRequest:
    """Parse a serialized ``ModelInferRequest`` and check it against ``spec``. ``shm``: the
    tensors the frontend resolved into system shared memory (``worker.shm``)."""
    request = pb.ModelInferRequest()
    views: list[memoryview] | None = None
    if len(data) >= IN_PLACE_MIN_BYTES:  # large tensors stay where they arrived
        data, views = split_raw_inputs(data)
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise RequestError(INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}") from exc
    raw: Sequence[bytes | memoryview] = request.raw_input_contents if views is None else views
    n_raw = len(raw)
    model = spec.name
    inputs = request.inputs
    in_shm = _inputs_in_shm(request, shm) if shm or _any_shm(request) else {}
    wanted_raw = len(inputs) - len(in_shm)
    if n_raw and n_raw != wanted_raw:
        if n_raw < wanted_raw:
            short = [t.name for t in inputs if t.name not in in_shm][n_raw]
            raise RequestError(INVALID_ARGUMENT, texts.no_input_data(short, model))
        raise RequestError(
            INVALID_ARGUMENT,
            f"raw_input_contents has {n_raw} entries for {len(inputs)} inputs",
        )
    raw_index = 0
    by_name = spec.input_by_name
    if len(inputs) != len(spec.inputs):
        given = [t.name for t in inputs]
        missing = [t.name for t in spec.inputs if t.name not in given]
        raise RequestError(
            INVALID_ARGUMENT,
            texts.request_prefix(request.id)
            + texts.input_count(model, len(spec.inputs), given, missing),
        )
    max_batch = spec.max_batch_size
    batch_size = 0
    decoded: dict[str, np.ndarray] = {}
    for tensor in inputs:
        name = tensor.name
        tspec = by_name.get(name)
        if tspec is None:
            raise RequestError(INVALID_ARGUMENT, texts.unexpected_input(name, model))
        if name in decoded:
            # core infer_request.cc AddOriginalInput
            raise RequestError(INVALID_ARGUMENT, f"input '{name}' already exists in request")
        if tensor.datatype != tspec.datatype:
            raise RequestError(
                INVALID_ARGUMENT,
                texts.request_prefix(request.id)
                + texts.input_datatype(name, model, tensor.datatype, tspec.datatype),
            )
        shape = tuple(tensor.shape)
        if max_batch:
            # Fast path for the common case; _check_shape explains whatever it lets through.
            rows = shape[0] if shape else 0
            if not (tspec.fixed_shape and 0 < rows <= max_batch and shape[1:] == tspec.dims):
                rows = _check_shape(request.id, model, name, shape, tspec, max_batch)
            if rows != batch_size:
                if batch_size:
                    raise RequestError(
                        INVALID_ARGUMENT,
                        texts.request_prefix(request.id) + texts.batch_mismatch(name, model),
                    )
                batch_size = rows
        elif not (tspec.fixed_shape and shape == tspec.dims):
            _check_shape(request.id, model, name, shape, tspec, max_batch)
        ref = in_shm.get(name)
        if ref is not None:
            decoded[name] = _from_raw(request.id, model, MAPPER.view(ref), tspec, shape)
        elif n_raw:
            if tensor.HasField("contents"):
                raise RequestError(INVALID_ARGUMENT, texts.contents_and_raw(name, model))
            decoded[name] = _from_raw(request.id, model, raw[raw_index], tspec, shape)
            raw_index += 1
        else:
            decoded[name] = _from_typed(model, name, tensor.contents, tspec, shape)
    if tuple(decoded) != spec.input_names:
        decoded = {n: decoded[n] for n in spec.input_names}
    classes: dict[str, tuple[int, tuple[str, ...]]] | None = None
    shm_outputs: dict[str, ShmRef] = {}
    if request.outputs:
        requested, outputs, classes = _requested_outputs(request, spec, shm, shm_outputs)
    else:
        requested, outputs = None, spec.outputs
    parameters = _parameters(request.parameters) if request.parameters else {}
    return DecodedRequest(
        id=request.id,
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=decoded,
        batch_size=batch_size if max_batch else 1,
        batched=max_batch > 0,
        requested_outputs=requested,
        outputs=outputs,
        parameters=parameters,
        classification=classes,
        shm_outputs=shm_outputs,
    )


def encode_response(
    request: DecodedRequest, model_name: str, model_version: str, outputs: Mapping[str, np.ndarray]
) -> bytes:
    """``encode_response_parts``, joined."""
    body = encode_response_parts(request, model_name, model_version, outputs)
    return body.join() if isinstance(body, RawParts) else body


def encode_response_parts(
    request: DecodedRequest, model_name: str, model_version: str, outputs: Mapping[str, np.ndarray]
) -> bytes | RawParts:
    """Serialize a ``ModelInferResponse`` with the outputs ``request`` asked for (RequestError
    INTERNAL when one is missing or has the wrong dtype); large raw outputs are left unjoined
    (``RawParts``: the reply path joins them, or writes them straight into the request's slab).
    """
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version)
    response.id = request.id
    raw: list[bytes | np.ndarray] = []
    size = 0
    classes = request.classification
    for tspec in request.outputs:
        array = outputs.get(tspec.name)
        if array is None:
            raise RequestError(INTERNAL, f"model '{model_name}' produced no output '{tspec.name}'")
        if classes is not None and tspec.name in classes:
            count, labels = classes[tspec.name]
            top = classify(array, count, labels, request.batched)
            response.outputs.add(name=tspec.name, datatype="BYTES", shape=top.shape)
            raw.append(encode_bytes_tensor(top, tspec.name))
            continue
        response.outputs.add(name=tspec.name, datatype=tspec.datatype, shape=array.shape)
        ref = request.shm_outputs.get(tspec.name) if request.shm_outputs else None
        if ref is not None:  # as Triton: an empty raw entry, the data in the region
            _to_shm(ref, array, tspec, model_name)
            raw.append(b"")
        elif tspec.byte_size:
            if array.dtype != tspec.numpy_dtype:
                raise RequestError(
                    INTERNAL,
                    f"model '{model_name}' output '{tspec.name}' has dtype {array.dtype}, "
                    f"config says {tspec.datatype}",
                )
            raw.append(array)
            size += array.nbytes
        else:
            raw.append(encode_bytes_tensor(array, tspec.name))
    if size >= IN_PLACE_MIN_BYTES:  # one copy of each tensor instead of three
        return RawParts(response.SerializeToString(), raw)
    response.raw_output_contents.extend(
        r.tobytes() if isinstance(r, np.ndarray) else r for r in raw
    )
    return response.SerializeToString()


def batch_signature(request: DecodedRequest) -> Hashable:
    """Requests with equal signatures can be concatenated along dim 0 into one batch.

    A request to a model without batching gets a signature of its own.
    """
    if not request.batched:
        return ("unbatched", id(request))
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in request.inputs.items())


def encode_bytes_tensor(array: np.ndarray, name: str = "") -> bytes:
    """BYTES elements in C order, each as a 4-byte little-endian length then the bytes.

    Elements may be ``bytes`` (numpy ``S`` arrays too) or ``str`` (encoded as UTF-8).
    """
    pack = _LENGTH.pack
    parts: list[bytes] = []
    for item in array.flat:
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            data = item.encode()
        elif isinstance(item, bytearray | memoryview):
            data = bytes(item)
        else:
            raise RequestError(
                INTERNAL,
                f"output '{name}': BYTES elements must be bytes or str, got {type(item).__name__}",
            )
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes_tensor(
    data: bytes | memoryview, count: int, name: str = "", model: str = ""
) -> np.ndarray:
    """Split length-prefixed BYTES elements into a 1-D object array of ``count`` ``bytes``.
    Errors carry Triton's texts (core src/infer_request.cc, ValidateBytesInputs)."""
    view = memoryview(data)
    end = len(data)
    offset = 0
    unpack = _LENGTH.unpack_from
    items: list[bytes] = []
    # Bounded by the data as well as by ``count``: a huge shape cannot make us allocate for it.
    while offset < end and len(items) <= count:
        if offset + 4 > end:
            raise RequestError(INVALID_ARGUMENT, f"input '{name}': {_BYTES_OVERRUN}")
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > end:
            raise RequestError(INVALID_ARGUMENT, f"input '{name}': {_BYTES_OVERRUN}")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) < count:
        raise RequestError(INVALID_ARGUMENT, texts.bytes_count(name, model, count, len(items)))
    if len(items) > count:
        raise RequestError(
            INVALID_ARGUMENT,
            f"unexpected number of string elements {len(items)} for inference input '{name}' "
            f"for model '{model}', expecting {count}",
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def _check_shape(
    request_id: str,
    model: str,
    name: str,
    shape: tuple[int, ...],
    tspec: TensorSpec,
    max_batch: int,
) -> int:
    """Validate ``shape`` against the config and return its number of rows (Triton's texts)."""
    dims = tspec.dims
    prefix = texts.request_prefix(request_id)
    if max_batch > 0:
        if not shape:
            raise RequestError(INVALID_ARGUMENT, prefix + texts.no_batch_dim(name, model))
        rows = shape[0]
        if rows > max_batch:
            raise RequestError(INVALID_ARGUMENT, prefix + texts.batch_too_large(max_batch, model))
        body = shape[1:]
        expected = (-1, *dims)
    else:
        rows = 1
        body = shape
        expected = dims
    if (
        rows < 1
        or len(body) != len(dims)
        or any(got < 0 or want not in (-1, got) for want, got in zip(dims, body, strict=True))
    ):
        raise RequestError(
            INVALID_ARGUMENT, prefix + texts.input_shape(name, model, expected, shape)
        )
    return rows


def _from_raw(
    request_id: str, model: str, data: bytes | memoryview, tspec: TensorSpec, shape: tuple[int, ...]
) -> np.ndarray:
    name = tspec.name
    count = math.prod(shape)
    if not tspec.byte_size:
        return decode_bytes_tensor(data, count, name, model).reshape(shape)
    expected = count * tspec.byte_size
    if len(data) != expected:
        raise RequestError(
            INVALID_ARGUMENT,
            texts.request_prefix(request_id)
            + texts.input_byte_size(name, model, expected, len(data)),
        )
    if tspec.datatype == "BOOL" and count and np.frombuffer(data, dtype=np.uint8).max() > 1:
        # numpy and torch take any non-zero byte as a bool without complaint, and CUDA
        # kernels then read an invalid bool: Triton's encoding is one byte, 0 or 1.
        raise RequestError(INVALID_ARGUMENT, f"input '{name}': BOOL bytes must be 0 or 1")
    return np.frombuffer(data, dtype=tspec.numpy_dtype).reshape(shape)


def _from_typed(
    model: str,
    name: str,
    contents: pb.InferTensorContents,
    tspec: TensorSpec,
    shape: tuple[int, ...],
) -> np.ndarray:
    typed = _TYPED_CONTENTS.get(tspec.datatype)
    if typed is None:
        raise RequestError(
            INVALID_ARGUMENT,
            f"input '{name}': {tspec.datatype} data must be sent in raw_input_contents",
        )
    field_name, field_dtype = typed
    for other, (other_field, _) in _FIELD_DATATYPE.items():
        if other_field != field_name and len(getattr(contents, other_field)):
            raise RequestError(
                INVALID_ARGUMENT, texts.typed_datatype(name, model, other, tspec.datatype)
            )
    values = getattr(contents, field_name)
    count = math.prod(shape)
    if len(values) != count:
        if not tspec.byte_size:
            raise RequestError(INVALID_ARGUMENT, texts.bytes_count(name, model, count, len(values)))
        raise RequestError(
            INVALID_ARGUMENT,
            texts.input_byte_size(
                name, model, count * tspec.byte_size, len(values) * tspec.byte_size
            ),
        )
    if not tspec.byte_size:
        items = np.empty(count, dtype=object)
        items[:] = list(values)
        return items.reshape(shape)
    array = np.array(values, dtype=field_dtype)
    if field_dtype != tspec.numpy_dtype:
        narrowed = array.astype(tspec.numpy_dtype)
        if not np.array_equal(narrowed, array):
            raise RequestError(
                INVALID_ARGUMENT, f"input '{name}': a value is out of range for {tspec.datatype}"
            )
        array = narrowed
    return array.reshape(shape)


def _requested_outputs(
    request: pb.ModelInferRequest,
    spec: ModelSpec,
    shm: Sequence[ShmRef],
    shm_outputs: dict[str, ShmRef],
) -> tuple[
    tuple[str, ...] | None,
    tuple[TensorSpec, ...],
    dict[str, tuple[int, tuple[str, ...]]] | None,
]:
    names: list[str] = []
    classes: dict[str, tuple[int, tuple[str, ...]]] | None = None
    for output in request.outputs:
        name = output.name
        if name not in spec.output_by_name:
            raise RequestError(INVALID_ARGUMENT, texts.unexpected_output(name, spec.name))
        if name in names:
            raise RequestError(INVALID_ARGUMENT, f"output '{name}' is requested more than once")
        if output.parameters:
            ref = find_ref(name, True, output.parameters, shm)
            if ref is not None:
                shm_outputs[name] = ref
            param = output.parameters.get("classification")
            count = param.int64_param if param is not None else 0
            if count > 0:  # Triton returns the plain tensor for a count of 0
                check_datatype(spec.output_by_name[name].datatype)
                if classes is None:
                    classes = {}
                classes[name] = (count, dict(spec.labels).get(name, ()))
        names.append(name)
    wanted = set(names)
    return tuple(names), tuple(t for t in spec.outputs if t.name in wanted), classes


def _any_shm(request: pb.ModelInferRequest) -> bool:
    return any(
        t.parameters and any(k in t.parameters for k in SHM_PARAMETERS) for t in request.inputs
    )


def _inputs_in_shm(request: pb.ModelInferRequest, shm: Sequence[ShmRef]) -> dict[str, ShmRef]:
    found: dict[str, ShmRef] = {}
    for tensor in request.inputs:
        if tensor.parameters:
            ref = find_ref(tensor.name, False, tensor.parameters, shm)
            if ref is not None:
                if tensor.HasField("contents"):
                    raise RequestError(
                        INVALID_ARGUMENT,
                        f"input '{tensor.name}': both shared memory and typed contents are set",
                    )
                found[tensor.name] = ref
    return found


def _to_shm(ref: ShmRef, array: np.ndarray, tspec: TensorSpec, model_name: str) -> None:
    if tspec.byte_size:
        if array.dtype != tspec.numpy_dtype:
            raise RequestError(
                INTERNAL,
                f"model '{model_name}' output '{tspec.name}' has dtype {array.dtype}, "
                f"config says {tspec.datatype}",
            )
        data: bytes | memoryview = np.ascontiguousarray(array).data.cast("B")
    else:
        data = encode_bytes_tensor(array, tspec.name)
    if len(data) > ref.byte_size:
        raise RequestError(
            INVALID_ARGUMENT,
            f"shared memory size specified with the request for output '{tspec.name}' "
            f"({ref.byte_size} bytes) should be at least {len(data)} bytes to hold the results",
        )
    MAPPER.view(ref)[: len(data)] = data


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    result: dict[str, ParameterValue] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        if which is not None:
            result[key] = getattr(parameter, which)
    return result
