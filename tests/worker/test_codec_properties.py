"""Property: any valid request decodes to the arrays that were sent, and re-encodes to the same
bytes, for every datatype, raw or typed, batched or not, with any choice of requested outputs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_request, make_spec, raw_bytes
from worker.codec import decode_bytes_tensor, decode_request, encode_response
from worker.model_config import DATATYPES

DATATYPE_NAMES = sorted(DATATYPES)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple:
    max_batch_size = draw(st.sampled_from([0, 1, 3]))
    rows = draw(st.integers(1, max_batch_size)) if max_batch_size else None
    count = draw(st.integers(1, 3))
    config_tensors = []
    arrays = []
    for index in range(count):
        datatype = draw(st.sampled_from(DATATYPE_NAMES))
        dims = draw(st.lists(st.sampled_from([-1, 1, 2, 3]), min_size=0, max_size=2))
        shape = [draw(st.integers(0, 3)) if d == -1 else d for d in dims]
        if rows is not None:
            shape = [rows, *shape]
        dtype = DATATYPES[datatype].numpy_dtype
        elements = st.binary(max_size=6) if datatype == "BYTES" else hnp.from_dtype(dtype)
        array = draw(hnp.arrays(dtype, tuple(shape), elements=elements))
        config_tensors.append((f"T{index}", datatype, tuple(dims)))
        arrays.append(array)
    typed = draw(st.booleans()) and all(t[1] != "FP16" for t in config_tensors)
    output_names = [f"OUT_{name}" for name, _, _ in config_tensors]
    requested = draw(st.none() | st.lists(st.sampled_from(output_names), min_size=1, unique=True))
    order = draw(st.permutations(range(count)))
    return max_batch_size, rows, config_tensors, arrays, typed, requested, order


def same_values(got: np.ndarray, want: np.ndarray) -> bool:
    if want.dtype == object or want.dtype.kind in "biu":
        return got.tolist() == want.tolist()
    # Typed float contents pass through Python floats, which may quiet a NaN's payload.
    return bool(np.array_equal(got, want, equal_nan=True))


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(valid_requests())
def test_valid_requests_round_trip(case: tuple) -> None:
    max_batch_size, rows, config_tensors, arrays, typed, requested, order = case
    outputs_config = [(f"OUT_{n}", t, d) for n, t, d in config_tensors]
    spec = make_spec(config_tensors, outputs_config, max_batch_size)
    sent = [(config_tensors[i][0], config_tensors[i][1], arrays[i]) for i in order]
    request = make_request(sent, typed=typed, outputs=requested or ())

    decoded = decode_request(request.SerializeToString(), spec)

    assert decoded.batch_size == (rows if rows is not None else 1)
    assert list(decoded.inputs) == [name for name, _, _ in config_tensors]
    for (name, datatype, _), array in zip(config_tensors, arrays, strict=True):
        got = decoded.inputs[name]
        assert got.dtype == DATATYPES[datatype].numpy_dtype
        assert got.shape == array.shape
        if typed:
            assert same_values(got, array)
        else:
            assert raw_bytes(datatype, got) == raw_bytes(datatype, array)

    outputs = {f"OUT_{name}": decoded.inputs[name] for name, _, _ in config_tensors}
    response = pb.ModelInferResponse.FromString(encode_response(decoded, "m", "3", outputs))
    expected = [t for t in outputs_config if requested is None or t[0] in requested]
    assert [o.name for o in response.outputs] == [t[0] for t in expected]
    assert response.id == request.id
    assert len(response.raw_output_contents) == len(expected)
    for out, raw, (name, datatype, _) in zip(
        response.outputs, response.raw_output_contents, expected, strict=True
    ):
        original = arrays[[f"OUT_{n}" for n, _, _ in config_tensors].index(name)]
        assert out.datatype == datatype
        assert tuple(out.shape) == original.shape
        assert raw == raw_bytes(datatype, decoded.inputs[name.removeprefix("OUT_")])
        if datatype == "BYTES":
            back = decode_bytes_tensor(raw, original.size).reshape(original.shape)
        else:
            back = np.frombuffer(raw, DATATYPES[datatype].numpy_dtype).reshape(original.shape)
        assert same_values(back, original)
