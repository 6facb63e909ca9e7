"""Builders for ModelInferRequest bytes and specs, shared by the codec tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from worker.codec import encode_bytes_tensor
from worker.model_config import NAME_TO_CONFIG_TYPE, ModelSpec, parse_model_config

TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def make_spec(
    inputs: Sequence[tuple[str, str, Sequence[int]]],
    outputs: Sequence[tuple[str, str, Sequence[int]]],
    max_batch_size: int = 0,
    name: str = "m",
) -> ModelSpec:
    """A spec from (name, Triton datatype, dims) triples, through real config.pbtxt text."""

    def block(kind: str, tensors: Sequence[tuple[str, str, Sequence[int]]]) -> str:
        items = []
        for tensor_name, datatype, dims in tensors:
            type_name = mc.DataType.Name(NAME_TO_CONFIG_TYPE[datatype])
            dims_text = ", ".join(str(d) for d in dims)
            items.append(
                f'{{ name: "{tensor_name}" data_type: {type_name} dims: [ {dims_text} ] }}'
            )
        return f"{kind} [ {', '.join(items)} ]\n"

    text = f"max_batch_size: {max_batch_size}\n" + block("input", inputs) + block("output", outputs)
    return parse_model_config(text, name)


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The raw_input_contents entry for an array, as a client would send it."""
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    return np.ascontiguousarray(array).tobytes()


def make_request(
    tensors: Sequence[tuple[str, str, np.ndarray]],
    *,
    typed: bool = False,
    outputs: Sequence[str] = (),
    request_id: str = "req-1",
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying (name, datatype, array) inputs, raw or as typed contents."""
    request = pb.ModelInferRequest(model_name="m", id=request_id)
    for name, datatype, array in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if typed:
            values = array.flatten().tolist()
            getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(values)
        else:
            request.raw_input_contents.append(raw_bytes(datatype, array))
    for name in outputs:
        request.outputs.add(name=name)
    return request
