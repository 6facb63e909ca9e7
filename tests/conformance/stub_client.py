"""A client on stubs generated from OUR protos with ``-I protos`` only, run in its own process.

Usage: ``python tests/conformance/stub_client.py HOST:PORT OUT_DIR``. Compiles
``protos/*.proto`` with grpc_tools (``-I protos``, nothing else) into OUT_DIR, imports the
result as top-level modules (as a user of the protos would), checks Triton's answers, prints
``STUB CLIENT OK`` and exits 0. It must not run in the pytest process: tritonclient's copy of
the ``inference.*`` protos is loaded there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def main(url: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTOS / "grpc_service.proto"),
            str(PROTOS / "model_config.proto"),
        ]
    )
    assert rc == 0, f"protoc -I protos failed: {rc}"
    sys.path.insert(0, str(out))
    pb = importlib.import_module("grpc_service_pb2")
    pb_grpc = importlib.import_module("grpc_service_pb2_grpc")
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == "triton"
        try:
            stub.ModelInfer(pb.ModelInferRequest(model_name="no_such_model"), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
            assert err.details() == "Request for unknown model: 'no_such_model' is not found"
        else:
            raise AssertionError("ModelInfer on an unknown model succeeded")
        request = pb.ModelInferRequest(model_name="simple", id="stub")
        a = np.arange(16, dtype=np.int32)
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            request.raw_input_contents.append(a.tobytes())
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "stub"
        out0 = np.frombuffer(response.raw_output_contents[0], dtype="<i4")
        np.testing.assert_array_equal(out0, a + a)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="simple"), timeout=10).config
        assert config.max_batch_size == 8  # model_config.proto types, imported by grpc_service
    print("STUB CLIENT OK")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
