"""A client built on OUR generated stubs (``protos``), run in its own process by the tests.

Usage: ``python tests/integration/stub_client.py HOST:PORT``. Asserts, prints ``STUB CLIENT OK``
and exits 0 when every call behaved. It must run outside the pytest process: tritonclient's
copy of the ``inference.*`` protos and ours cannot live in one process.
"""

from __future__ import annotations

import sys

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

DIM = 16


def main(url: str) -> None:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="simple"), timeout=10).ready

        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
        assert server.name, f"ServerMetadata without a name: {server}"
        assert server.version, f"ServerMetadata without a version: {server}"

        model = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"), timeout=10)
        assert model.name == "simple", model
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
            ("INPUT0", "INT32", [-1, DIM]),
            ("INPUT1", "INT32", [-1, DIM]),
        ], model

        rng = np.random.default_rng(7)
        batch = 3
        a = rng.integers(-(2**30), 2**30, size=(batch, DIM), dtype=np.int32)
        b = rng.integers(-(2**30), 2**30, size=(batch, DIM), dtype=np.int32)
        request = pb.ModelInferRequest(model_name="simple", id="stub-1")
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[batch, DIM])
        request.raw_input_contents.extend([a.tobytes(), b.tobytes()])
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "stub-1", response.id
        assert response.model_name == "simple"
        by_name = {out.name: i for i, out in enumerate(response.outputs)}
        assert sorted(by_name) == ["OUTPUT0", "OUTPUT1"], by_name
        for name, want in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
            out = response.outputs[by_name[name]]
            assert out.datatype == "INT32" and list(out.shape) == [batch, DIM], out
            got = np.frombuffer(response.raw_output_contents[by_name[name]], dtype="<i4")
            np.testing.assert_array_equal(got.reshape(batch, DIM), want, err_msg=name)

        try:
            stub.ModelInfer(pb.ModelInferRequest(model_name="no_such_model"), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, (err.code(), err.details())
        else:
            raise AssertionError("ModelInfer on an unknown model succeeded")

    print("STUB CLIENT OK")


if __name__ == "__main__":
    main(sys.argv[1])
