"""The bundled demo repository: built deterministically, matches the committed copies, and gives
the right numbers end to end through codec and loaders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fabric.errors import INVALID_ARGUMENT, RequestError
from protos import grpc_service_pb2 as pb
from tests.worker.codec_helpers import make_request
from worker.codec import decode_bytes_tensor, decode_request, encode_response
from worker.demo_models import build_repository, main, make_mlp
from worker.loaders import LoadedModel, load_model
from worker.model_config import DynamicBatching
from worker.repository import ModelSource, scan_model

COMMITTED = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_repository(root)
    return root


@pytest.fixture(scope="module")
def sources(repo: Path) -> dict[str, ModelSource]:
    return {p.name: scan_model(p) for p in repo.iterdir() if (p / "config.pbtxt").is_file()}


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def infer(model: LoadedModel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    decoded = decode_request(request.SerializeToString(), model.spec)
    outputs = model.execute(decoded.inputs)
    data = encode_response(decoded, model.spec.name, model.version, outputs)
    return pb.ModelInferResponse.FromString(data)


def test_build_is_deterministic(repo: Path, tmp_path: Path) -> None:
    main([str(tmp_path)])
    assert digests(tmp_path) == digests(repo)
    assert set(digests(repo)) == {
        "simple/config.pbtxt",
        "simple/1/model.pt",
        "simple_string/config.pbtxt",
        "simple_string/1/model.py",
        "mlp/config.pbtxt",
        "mlp/1/model.pt",
        "mlp_wait/config.pbtxt",
        "mlp_wait/1/model.pt",
        "simple_sequence/config.pbtxt",
        "simple_sequence/1/model.py",
        "simple_dyna_sequence/config.pbtxt",
        "simple_dyna_sequence/1/model.py",
        "repeat_int32/config.pbtxt",
        "repeat_int32/1/model.py",
        "simple_int8/config.pbtxt",
        "simple_int8/1/model.pt",
        "simple_identity/config.pbtxt",
        "simple_identity/1/model.py",
        "simple_classifier/config.pbtxt",
        "simple_classifier/labels.txt",
        "simple_classifier/1/model.py",
        "identity_fp32/config.pbtxt",
        "identity_fp32/1/model.pt",
    }


@pytest.mark.parametrize(
    "path",
    [
        "simple/config.pbtxt",
        "simple_string/config.pbtxt",
        "simple_string/1/model.py",
        "mlp/config.pbtxt",
        "mlp_wait/config.pbtxt",
        "simple_sequence/config.pbtxt",
        "simple_sequence/1/model.py",
        "simple_dyna_sequence/config.pbtxt",
        "simple_dyna_sequence/1/model.py",
        "repeat_int32/config.pbtxt",
        "repeat_int32/1/model.py",
        "simple_int8/config.pbtxt",
        "simple_identity/config.pbtxt",
        "simple_identity/1/model.py",
        "simple_classifier/config.pbtxt",
        "simple_classifier/labels.txt",
        "simple_classifier/1/model.py",
        "identity_fp32/config.pbtxt",
    ],
)
def test_committed_copies_match_the_builder(repo: Path, path: str) -> None:
    assert (COMMITTED / path).read_text() == (repo / path).read_text()


def test_specs(sources: dict[str, ModelSource]) -> None:
    assert sorted(sources) == [
        "identity_fp32",
        "mlp",
        "mlp_wait",
        "repeat_int32",
        "simple",
        "simple_classifier",
        "simple_dyna_sequence",
        "simple_identity",
        "simple_int8",
        "simple_sequence",
        "simple_string",
    ]
    assert sources["simple"].spec.max_batch_size == 8
    assert [t.datatype for t in sources["simple_string"].spec.inputs] == ["BYTES", "BYTES"]
    mlp = sources["mlp"].spec
    assert mlp.max_batch_size == 64
    assert mlp.dynamic_batching == DynamicBatching(max_queue_delay_microseconds=500)
    assert mlp.dispatch_when_idle  # c=1 latency: an idle instance does not wait
    mlp_wait = sources["mlp_wait"].spec
    assert mlp_wait.dynamic_batching == mlp.dynamic_batching
    assert not mlp_wait.dispatch_when_idle  # waits for its delay, as Triton does
    assert all(s.versions == (1,) for s in sources.values())


def test_simple(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple"], 1, "cpu")
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 7, dtype=np.int32)
    response = infer(model, make_request([("INPUT0", "INT32", a), ("INPUT1", "INT32", b)]))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    sums, diffs = (np.frombuffer(r, np.int32).reshape(2, 16) for r in response.raw_output_contents)
    np.testing.assert_array_equal(sums, a + b)
    np.testing.assert_array_equal(diffs, a - b)


def test_simple_string(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple_string"], 1, "cpu")
    a = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    b = np.array([[b"-3"] * 16], dtype=object)
    response = infer(model, make_request([("INPUT0", "BYTES", a), ("INPUT1", "BYTES", b)]))
    assert [o.datatype for o in response.outputs] == ["BYTES", "BYTES"]
    sums, diffs = (decode_bytes_tensor(r, 16).tolist() for r in response.raw_output_contents)
    assert sums == [str(i - 3).encode() for i in range(16)]
    assert diffs == [str(i + 3).encode() for i in range(16)]


def test_simple_string_rejects_non_integers(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple_string"], 1, "cpu")
    a = np.array([[b"x"] * 16], dtype=object)
    with pytest.raises(RequestError) as info:
        model.execute({"INPUT0": a, "INPUT1": a})
    assert info.value.code == INVALID_ARGUMENT
    assert "input 'INPUT0'" in info.value.message


@pytest.mark.parametrize("name", ["mlp", "mlp_wait"])
def test_mlp_matches_the_seeded_network(sources: dict[str, ModelSource], name: str) -> None:
    model = load_model(sources[name], 1, "cpu")
    x = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    response = infer(model, make_request([("INPUT0", "FP32", x)]))
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(5, 256)
    with torch.inference_mode():
        want = make_mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(np.abs(want).sum()) > 0


def test_simple_int8_wraps_as_int8(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple_int8"], 1, "cpu")
    a = np.arange(-8, 8, dtype=np.int8).reshape(1, 16) * 15
    b = np.full((1, 16), 100, dtype=np.int8)
    response = infer(model, make_request([("INPUT0", "INT8", a), ("INPUT1", "INT8", b)]))
    sums, diffs = (np.frombuffer(r, np.int8).reshape(1, 16) for r in response.raw_output_contents)
    np.testing.assert_array_equal(sums, a + b)  # numpy int8 wraps the same way
    np.testing.assert_array_equal(diffs, a - b)


def test_simple_identity_is_byte_exact(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple_identity"], 1, "cpu")
    items = [b"he\x00llo", b"", b"\x00", bytes(range(256)), "ünï".encode()] * 2
    a = np.array(items, dtype=object).reshape(2, 5)
    response = infer(model, make_request([("INPUT0", "BYTES", a)]))
    assert list(response.outputs[0].shape) == [2, 5]
    assert decode_bytes_tensor(response.raw_output_contents[0], 10).tolist() == items


def test_simple_classifier_returns_tritons_top_k(sources: dict[str, ModelSource]) -> None:
    model = load_model(sources["simple_classifier"], 1, "cpu")
    x = np.zeros((2, 16), np.float32)
    x[0, 3], x[0, 7] = 0.5, 2.0
    x[1, 15] = -1.0
    request = make_request([("INPUT0", "FP32", x)])
    request.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    response = infer(model, request)
    out = response.outputs[0]
    assert (out.datatype, list(out.shape)) == ("BYTES", [2, 2])
    assert decode_bytes_tensor(response.raw_output_contents[0], 4).tolist() == [
        b"2.000000:7:label_7",
        b"0.500000:3:label_3",
        b"0.000000:0:label_0",
        b"0.000000:1:label_1",
    ]
