"""Ray Serve peer server: a TorchScript model behind Ray Serve's gRPC proxy, for ``bench.peers``.

Runs under ``bench/.venv-peers/bin/python`` (Ray Serve, torch 2.13.0), never the project venv.
Ray Serve's gRPC proxy is given the KServe v2 service (``inference.GRPCInferenceService`` from
tritonclient's generated code), so the same tritonclient load generator drives it. One
deployment, one replica with one torch thread, ``@serve.batch(max_batch_size=64,
batch_wait_timeout_s=0.0005)`` for the same batching settings as our config.pbtxt. It implements
ServerLive, ServerReady, ModelReady and ModelInfer (raw FP32 tensors).

Ray Serve binds its gRPC proxy to ``[::]`` with no option to change it; ``bench.peers`` installs a
start-up hook in the peers venv (``bench/ray_loopback.py``, active only when
``BENCH_RAY_LOOPBACK_HOOK`` names it) that rewrites that address to 127.0.0.1. HTTP and Ray's own
services bind 127.0.0.1; the dashboard is off.

    bench/.venv-peers/bin/python bench/ray_server.py --model-file DIR/mlp/1/model.pt \
        --grpc-port 9100 --http-port 9101
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from peer_args import peer_parser  # this script's folder is on sys.path

SERVICER = "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"


def main() -> None:
    p = peer_parser(__doc__.splitlines()[0])
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions
    from tritonclient.grpc import service_pb2 as pb

    name, width = args.model, args.width
    model_file = str(args.model_file)
    max_batch, delay_s = args.max_batch_size, args.max_queue_delay_us / 1e6

    @serve.deployment(
        name=name,
        num_replicas=1,
        max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": 1},
    )
    class Model:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.model = torch.jit.load(model_file, map_location="cpu").eval()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=delay_s)
        async def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
            x = np.concatenate(xs, axis=0)
            with self.torch.inference_mode():
                y = self.model(self.torch.from_numpy(x)).numpy()
            return list(np.split(y, np.cumsum([len(a) for a in xs])[:-1]))

        async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
            raw = request.raw_input_contents[0]
            x = np.frombuffer(raw, dtype=np.float32).reshape(-1, width)
            y = await self.run(x)
            resp = pb.ModelInferResponse(model_name=name, model_version="1")
            out = resp.outputs.add()
            out.name = "OUTPUT0"
            out.datatype = "FP32"
            out.shape.extend(y.shape)
            resp.raw_output_contents.append(np.ascontiguousarray(y).tobytes())
            return resp

        def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=True)

        def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=request.name == name)

    # tritonclient's generated messages call their module 'grpc_service_pb2', which Ray must
    # import to unpickle them between its gRPC proxy and the replica: a shim module on every Ray
    # process's path (they inherit PYTHONPATH) re-exports tritonclient's.
    shim = Path(tempfile.mkdtemp(prefix="bench-ray-shim-"))
    (shim / "grpc_service_pb2.py").write_text("from tritonclient.grpc.service_pb2 import *\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p
    )
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=args.http_port),
        grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER]),
    )
    # serve.deployment turns the class into a Deployment; mypy sees no stubs for ray.
    deployment: Any = Model
    serve.run(deployment.bind(), name=name, route_prefix=f"/{name}")
    print(f"ray serve serving {name} on 127.0.0.1:{args.grpc_port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
