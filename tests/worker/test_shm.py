"""The worker maps what the frontend resolved, and nothing else: keys are plain names, symlinks
and shrunk or replaced objects are caught, inputs are read in place and outputs written once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fabric.errors import INVALID_ARGUMENT, NOT_FOUND, RequestError
from fabric.protocol import ShmRef
from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_spec
from worker import shm as worker_shm
from worker.codec import decode_request, encode_response
from worker.shm import ShmMapper


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    (tmp_path / "obj").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    return tmp_path


def test_views_are_in_place_and_follow_a_replaced_object(shm_dir: Path) -> None:
    mapper = ShmMapper(shm_dir)
    view = mapper.view(ShmRef("x", False, "/obj", 16, 32))
    assert np.frombuffer(view, np.float32).tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    view[:4] = np.float32(99).tobytes()  # writes reach the object itself
    assert np.frombuffer((shm_dir / "obj").read_bytes()[16:20], np.float32)[0] == 99
    replacement = shm_dir / "new"
    replacement.write_bytes(np.full(64, 7, np.float32).tobytes())
    os.replace(replacement, shm_dir / "obj")
    again = mapper.view(ShmRef("x", False, "obj", 0, 8))
    assert np.frombuffer(again, np.float32).tolist() == [7.0, 7.0]


@pytest.mark.parametrize(
    ("ref", "text"),
    [
        (ShmRef("x", False, "../obj", 0, 4), "invalid shared memory key"),
        (ShmRef("x", False, "/..", 0, 4), "invalid shared memory key"),
        (ShmRef("x", False, "/missing", 0, 4), "Unable to open shared memory region"),
        (ShmRef("x", False, "/obj", 250, 16), "is 256 bytes"),
        (ShmRef("x", False, "/obj", -4, 8), "is 256 bytes"),
        (ShmRef("x", False, "/link", 0, 4), "Unable to open shared memory region"),
    ],
)
def test_refused(shm_dir: Path, tmp_path: Path, ref: ShmRef, text: str) -> None:
    os.symlink(shm_dir / "obj", shm_dir / "link")
    with pytest.raises(RequestError) as info:
        ShmMapper(shm_dir).view(ref)
    assert info.value.code == INVALID_ARGUMENT and text in info.value.message


SPEC = make_spec(
    [("INPUT0", "FP32", [4]), ("INPUT1", "FP32", [4])],
    [("OUTPUT0", "FP32", [4]), ("OUTPUT1", "FP32", [4])],
    8,
)


def shm_request(region_outputs: bool) -> bytes:
    """INPUT0 from shared memory, INPUT1 raw (raw_input_contents then has one entry)."""
    req = pb.ModelInferRequest(model_name="m", id="1")
    a = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    a.parameters["shared_memory_region"].string_param = "r"
    a.parameters["shared_memory_byte_size"].int64_param = 16
    req.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    if region_outputs:
        out = req.outputs.add(name="OUTPUT0")
        out.parameters["shared_memory_region"].string_param = "r"
        out.parameters["shared_memory_byte_size"].int64_param = 16
        req.outputs.add(name="OUTPUT1")
    return req.SerializeToString()


def test_codec_reads_inputs_and_writes_outputs_through_shared_memory(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_shm, "MAPPER", ShmMapper(shm_dir))
    monkeypatch.setattr("worker.codec.MAPPER", worker_shm.MAPPER)
    refs = (ShmRef("INPUT0", False, "/obj", 0, 16), ShmRef("OUTPUT0", True, "/obj", 128, 16))
    decoded = decode_request(shm_request(True), SPEC, refs)
    assert decoded.inputs["INPUT0"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert decoded.inputs["INPUT1"].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    outputs = {
        "OUTPUT0": decoded.inputs["INPUT0"] * 10,
        "OUTPUT1": decoded.inputs["INPUT1"] + decoded.inputs["INPUT0"],
    }
    response = pb.ModelInferResponse.FromString(encode_response(decoded, "m", "1", outputs))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert list(response.outputs[0].shape) == [1, 4] and response.outputs[0].datatype == "FP32"
    assert response.raw_output_contents[0] == b""  # as Triton: the data is in the region
    assert np.frombuffer(response.raw_output_contents[1], np.float32).tolist() == [1, 2, 3, 4]
    written = np.frombuffer((shm_dir / "obj").read_bytes()[128:144], np.float32)
    assert written.tolist() == [0.0, 10.0, 20.0, 30.0]


def test_too_small_output_region_and_unresolved_regions(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.codec.MAPPER", ShmMapper(shm_dir))
    refs = (ShmRef("INPUT0", False, "/obj", 0, 16), ShmRef("OUTPUT0", True, "/obj", 128, 8))
    decoded = decode_request(shm_request(True), SPEC, refs)
    outputs = {"OUTPUT0": np.zeros((1, 4), np.float32), "OUTPUT1": np.zeros((1, 4), np.float32)}
    with pytest.raises(RequestError, match=r"\(8 bytes\) should be at least 16 bytes"):
        encode_response(decoded, "m", "1", outputs)
    with pytest.raises(RequestError) as info:  # the frontend resolved nothing (no regions)
        decode_request(shm_request(False), SPEC)
    assert info.value.code == NOT_FOUND
    assert info.value.message == "Unable to find shared memory region: 'r'"
