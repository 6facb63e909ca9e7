"""Inputs, expected answers and raw protobuf requests for the end-to-end tests.

Expected answers come from numpy (``simple``, ``simple_string``) or from the same TorchScript
file the worker loads (``mlp``). Raw requests use tritonclient's copy of the KServe v2 protos,
never ours.
"""

from __future__ import annotations

import struct
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

SIMPLE_DIM = 16
MLP_DIM = 256
MLP_RTOL = 1e-4
MLP_ATOL = 1e-4
INT_LIMIT = 2**30
"""Test values stay within ±2**30 so that INT32 sums and differences never overflow."""


# -- inputs and expected answers ------------------------------------------------------------


def rand_int32(rng: np.random.Generator, batch: int, dim: int = SIMPLE_DIM) -> np.ndarray:
    return rng.integers(-INT_LIMIT, INT_LIMIT, size=(batch, dim), dtype=np.int32)


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    in0 = grpcclient.InferInput("INPUT0", list(a.shape), "INT32")
    in0.set_data_from_numpy(a)
    in1 = grpcclient.InferInput("INPUT1", list(b.shape), "INT32")
    in1.set_data_from_numpy(b)
    return [in0, in1]


def simple_expected(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {"OUTPUT0": (a + b).astype(np.int32), "OUTPUT1": (a - b).astype(np.int32)}


def to_bytes_tensor(values: np.ndarray) -> np.ndarray:
    """Decimal strings of integers, as an object array of bytes (tritonclient's BYTES)."""
    flat = [str(int(v)).encode() for v in values.reshape(-1)]
    return np.array(flat, dtype=np.object_).reshape(values.shape)


def string_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    sa, sb = to_bytes_tensor(a), to_bytes_tensor(b)
    in0 = grpcclient.InferInput("INPUT0", list(a.shape), "BYTES")
    in0.set_data_from_numpy(sa)
    in1 = grpcclient.InferInput("INPUT1", list(b.shape), "BYTES")
    in1.set_data_from_numpy(sb)
    return [in0, in1]


def string_expected(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "OUTPUT0": to_bytes_tensor(a.astype(np.int64) + b),
        "OUTPUT1": to_bytes_tensor(a.astype(np.int64) - b),
    }


def mlp_input(x: np.ndarray) -> list[grpcclient.InferInput]:
    in0 = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    in0.set_data_from_numpy(x)
    return [in0]


def rand_fp32(rng: np.random.Generator, batch: int, dim: int = MLP_DIM) -> np.ndarray:
    return rng.standard_normal((batch, dim)).astype(np.float32)


@cache
def _mlp_module(path: str) -> Any:
    import torch  # only the reference computation needs torch; kept out of import time

    with warnings.catch_warnings():
        # torch 2.9+ deprecates TorchScript loading; the demo model is TorchScript regardless.
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(path, map_location="cpu")
    module.eval()
    return module


def mlp_expected(model_repo: Path, x: np.ndarray) -> np.ndarray:
    import torch

    module = _mlp_module(str(model_repo / "mlp" / "1" / "model.pt"))
    with torch.inference_mode():
        out = module(torch.from_numpy(x.copy()))
    result: np.ndarray = out.numpy().astype(np.float32)
    return result


# -- checking results ---------------------------------------------------------------------


def assert_int_outputs(result: grpcclient.InferResult, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, f"response lacks {name}: {result.get_response()}"
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
        assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        np.testing.assert_array_equal(got, want, err_msg=name)


def assert_bytes_outputs(result: grpcclient.InferResult, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, f"response lacks {name}: {result.get_response()}"
        assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        assert got.reshape(-1).tolist() == want.reshape(-1).tolist(), name


def assert_mlp_output(result: grpcclient.InferResult, expected: np.ndarray) -> None:
    got = result.as_numpy("OUTPUT0")
    assert got is not None, f"response lacks OUTPUT0: {result.get_response()}"
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=MLP_RTOL, atol=MLP_ATOL)


def output_names(result: grpcclient.InferResult) -> list[str]:
    return [o.name for o in result.get_response().outputs]


def check_simple(client: grpcclient.InferenceServerClient, seed: int = 0, batch: int = 1) -> None:
    """One valid request that must succeed: proves the system still serves after an error."""
    rng = np.random.default_rng(seed)
    a, b = rand_int32(rng, batch), rand_int32(rng, batch)
    result = client.infer("simple", simple_inputs(a, b), client_timeout=30)
    assert_int_outputs(result, simple_expected(a, b))


def expect_error(code: str, fn: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    """Run a tritonclient call that must fail with gRPC status ``code`` (e.g. "NOT_FOUND")."""
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)
    exc = info.value
    assert exc.status() == f"StatusCode.{code}", (
        f"expected {code}, got {exc.status()}: {exc.message()}"
    )
    return exc


# -- raw protobuf requests (tritonclient's copy of the protos) -----------------------------


def raw_stub(url: str) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_tensor(
    name: str, datatype: str, shape: list[int]
) -> service_pb2.ModelInferRequest.InferInputTensor:
    return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def raw_simple_request(a: np.ndarray, b: np.ndarray) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    request.inputs.append(raw_tensor("INPUT0", "INT32", list(a.shape)))
    request.inputs.append(raw_tensor("INPUT1", "INT32", list(b.shape)))
    request.raw_input_contents.append(a.astype("<i4").tobytes())
    request.raw_input_contents.append(b.astype("<i4").tobytes())
    return request


def raw_call_error(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    request: service_pb2.ModelInferRequest,
    code: grpc.StatusCode,
) -> str:
    """Send a request that must fail with ``code``; returns the error details."""
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    details: str = err.details() or ""
    return details


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """BYTES tensor wire format: each element a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + length])
        offset += length
    assert offset == len(raw), "truncated BYTES tensor"
    return items


_NUMPY_OF = {"INT32": "<i4", "FP32": "<f4", "INT64": "<i8", "FP64": "<f8"}
_CONTENTS_OF = {
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def response_outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode every output, whether sent as ``raw_output_contents`` or typed ``contents``."""
    outputs: dict[str, np.ndarray] = {}
    use_raw = len(response.raw_output_contents) > 0
    if use_raw:
        assert len(response.raw_output_contents) == len(response.outputs), (
            "raw_output_contents must have one entry per output"
        )
    for index, out in enumerate(response.outputs):
        shape = tuple(out.shape)
        if use_raw:
            raw = response.raw_output_contents[index]
            if out.datatype == "BYTES":
                values: np.ndarray = np.array(deserialize_bytes(raw), dtype=np.object_)
            else:
                values = np.frombuffer(raw, dtype=_NUMPY_OF[out.datatype])
        else:
            typed = getattr(out.contents, _CONTENTS_OF[out.datatype])
            if out.datatype == "BYTES":
                values = np.array(list(typed), dtype=np.object_)
            else:
                values = np.array(list(typed), dtype=_NUMPY_OF[out.datatype])
        assert values.size == int(np.prod(shape)), f"{out.name}: {values.size} values for {shape}"
        outputs[out.name] = values.reshape(shape)
    return outputs
