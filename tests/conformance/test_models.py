"""Triton's example models (simple, simple_int8, simple_string, simple_identity) and the
classification extension, through tritonclient."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from tests.integration.stack import Stack


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_simple(triton_stack: Stack) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), np.int32)
    result = triton_stack.client().infer(
        "simple", [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_int8_wraps(triton_stack: Stack) -> None:
    a = np.full((2, 16), 120, np.int8)
    b = np.arange(32, dtype=np.int8).reshape(2, 16)
    result = triton_stack.client().infer(
        "simple_int8", [_input("INPUT0", a, "INT8"), _input("INPUT1", b, "INT8")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_string(triton_stack: Stack) -> None:
    a = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    b = np.array([[b"1"] * 16], dtype=object)
    result = triton_stack.client().infer(
        "simple_string", [_input("INPUT0", a, "BYTES"), _input("INPUT1", b, "BYTES")]
    )
    assert result.as_numpy("OUTPUT0").tolist() == [[str(i + 1).encode() for i in range(16)]]


def test_simple_identity_is_byte_exact_with_nuls(triton_stack: Stack) -> None:
    # Triton's own test: "he\x00llo" and 0x00010203 blobs, shape [2, 8] of 16 elements.
    data = np.array([b"he\x00llo", b"\x00\x01\x02\x03", b"", b"\x00"] * 4, dtype=object)
    data = data.reshape(2, 8)
    result = triton_stack.client().infer("simple_identity", [_input("INPUT0", data, "BYTES")])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (2, 8)
    assert out.tolist() == data.tolist()


def test_classification_returns_tritons_top_k_with_labels(triton_stack: Stack) -> None:
    scores = np.zeros((2, 16), np.float32)
    scores[0, 5], scores[0, 9] = 3.5, 1.25
    scores[1, 2] = 0.75
    result = triton_stack.client().infer(
        "simple_classifier",
        [_input("INPUT0", scores, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)],
    )
    out = result.get_output("OUTPUT0")
    assert (out.datatype, list(out.shape)) == ("BYTES", [2, 2])
    assert result.as_numpy("OUTPUT0").tolist() == [
        [b"3.500000:5:label_5", b"1.250000:9:label_9"],
        [b"0.750000:2:label_2", b"0.000000:0:label_0"],
    ]
