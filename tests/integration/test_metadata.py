"""Metadata RPCs, gRPC health checking and server reflection on a running frontend."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests.integration.helpers import MLP_DIM, SIMPLE_DIM, check_simple, simple_inputs
from tests.integration.stack import ALL_MODELS, DEMO_MODELS, Stack

SERVICE = "inference.GRPCInferenceService"


@pytest.fixture
def client(stack: Stack) -> grpcclient.InferenceServerClient:
    return stack.client()


@pytest.fixture
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.frontend.url) as channel:
        yield channel


def test_server_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in ALL_MODELS:
        assert client.is_model_ready(model), model
        assert client.is_model_ready(model, model_version="1"), model


@pytest.mark.parametrize(("model", "version"), [("no_such_model", ""), ("simple", "7")])
def test_model_ready_unknown(
    client: grpcclient.InferenceServerClient, model: str, version: str
) -> None:
    """Unknown models and versions are not ready: ready=false (as Triton) or NOT_FOUND."""
    try:
        ready = client.is_model_ready(model, model_version=version)
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.NOT_FOUND", exc
    else:
        assert not ready


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name, metadata
    assert metadata.version, metadata


EXPECTED_TENSORS = {
    "simple": (
        [("INPUT0", "INT32", [-1, SIMPLE_DIM]), ("INPUT1", "INT32", [-1, SIMPLE_DIM])],
        [("OUTPUT0", "INT32", [-1, SIMPLE_DIM]), ("OUTPUT1", "INT32", [-1, SIMPLE_DIM])],
    ),
    "simple_string": (
        [("INPUT0", "BYTES", [-1, SIMPLE_DIM]), ("INPUT1", "BYTES", [-1, SIMPLE_DIM])],
        [("OUTPUT0", "BYTES", [-1, SIMPLE_DIM]), ("OUTPUT1", "BYTES", [-1, SIMPLE_DIM])],
    ),
    "mlp": (
        [("INPUT0", "FP32", [-1, MLP_DIM])],
        [("OUTPUT0", "FP32", [-1, MLP_DIM])],
    ),
    "faulty": ([("INPUT0", "INT32", [-1, 4])], [("OUTPUT0", "INT32", [-1, 4])]),
    # max_batch_size 0: no batch dimension is prepended to the variable-length dim.
    "echo": ([("INPUT0", "FP32", [-1])], [("OUTPUT0", "FP32", [-1])]),
}


@pytest.mark.parametrize("model", sorted(EXPECTED_TENSORS))
def test_model_metadata(client: grpcclient.InferenceServerClient, model: str) -> None:
    metadata = client.get_model_metadata(model)
    assert metadata.name == model
    assert "1" in metadata.versions, metadata
    inputs, outputs = EXPECTED_TENSORS[model]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == outputs
    assert client.get_model_metadata(model, model_version="1").name == model


EXPECTED_CONFIG = {
    "simple": (8, [("INPUT0", "TYPE_INT32", [SIMPLE_DIM]), ("INPUT1", "TYPE_INT32", [SIMPLE_DIM])]),
    "simple_string": (
        8,
        [("INPUT0", "TYPE_STRING", [SIMPLE_DIM]), ("INPUT1", "TYPE_STRING", [SIMPLE_DIM])],
    ),
    "mlp": (64, [("INPUT0", "TYPE_FP32", [MLP_DIM])]),
    "echo": (0, [("INPUT0", "TYPE_FP32", [-1])]),
}


@pytest.mark.parametrize("model", sorted(EXPECTED_CONFIG))
def test_model_config(client: grpcclient.InferenceServerClient, model: str) -> None:
    config = client.get_model_config(model).config
    max_batch_size, inputs = EXPECTED_CONFIG[model]
    assert config.name == model
    assert config.max_batch_size == max_batch_size
    got = [
        (t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input
    ]
    assert got == inputs
    assert len(config.output) == (2 if model.startswith("simple") else 1)


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    by_name = {m.name: m for m in index.models}
    assert sorted(by_name) == sorted(ALL_MODELS), index
    assert set(DEMO_MODELS) <= set(by_name)
    for model in by_name.values():
        assert model.state == "READY", model
        assert model.version == "1", model


def test_health_check_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_inference_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert len(responses) == 2, responses

    services = {s.name for s in responses[0].list_services_response.service}
    assert SERVICE in services, services
    assert "grpc.health.v1.Health" in services, services

    files = responses[1].file_descriptor_response.file_descriptor_proto
    assert files, responses[1]
    methods = set()
    for raw in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in proto.service:
            if f"{proto.package}.{service.name}" == SERVICE:
                methods |= {m.name for m in service.method}
    assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata", "ServerReady"} <= methods


def _simple_stats(client: grpcclient.InferenceServerClient) -> tuple[int, int, int]:
    response = client.get_inference_statistics("simple")
    stats = [s for s in response.model_stats if s.name == "simple"]
    assert len(stats) == 1, response
    assert stats[0].version == "1", stats[0]
    s = stats[0]
    return s.inference_stats.success.count, s.inference_stats.fail.count, s.inference_count


def test_model_statistics_count_requests(client: grpcclient.InferenceServerClient) -> None:
    """ModelStatistics (listed in DESIGN.md): success, failure and inference counts move by
    exactly what this test sent."""
    success0, fail0, count0 = _simple_stats(client)
    for seed, batch in enumerate([1, 2, 3]):
        check_simple(client, seed=seed, batch=batch)
    bad = simple_inputs(*[np.zeros((1, SIMPLE_DIM + 1), dtype=np.int32)] * 2)
    with pytest.raises(InferenceServerException):
        client.infer("simple", bad)
    success1, fail1, count1 = _simple_stats(client)
    assert success1 - success0 == 3
    assert count1 - count0 == 1 + 2 + 3, "inference_count counts batch rows, as in Triton"
    assert fail1 - fail0 in (0, 1), "a request rejected before the model may or may not count"
