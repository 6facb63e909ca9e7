"""The ceiling of Python gRPC: a bare grpc.aio server answering every ModelInfer with fixed bytes.

It speaks just enough of ``inference.GRPCInferenceService`` for tritonclient to wait for it
(ServerLive, ServerReady, ModelReady, ModelMetadata) and answers ModelInfer with one precomputed,
serialized ``ModelInferResponse`` for the ``mlp`` model (OUTPUT0, FP32, [1, 256]; ``--model`` and
``--width`` name another model and output size). ModelInfer uses
identity (de)serializers, so no protobuf work happens per request: whatever our stack measures is
compared against what grpc.aio alone costs on the same machine in the same run.

This process builds its messages with tritonclient's ``service_pb2`` and never imports our
``protos`` package.

    python -m bench.bare_server --port 8001 [--host 127.0.0.1] [--model mlp] [--width 256]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

SERVICE = "inference.GRPCInferenceService"
MODEL = "mlp"
WIDTH = 256


def fixed_response(model: str = MODEL, width: int = WIDTH) -> bytes:
    """Serialized ModelInferResponse with one FP32 [1, width] output of fixed-seed values."""
    values = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    resp = service_pb2.ModelInferResponse(model_name=model, model_version="1")
    out = resp.outputs.add()
    out.name = "OUTPUT0"
    out.datatype = "FP32"
    out.shape.extend([1, width])
    resp.raw_output_contents.append(values.tobytes())
    return resp.SerializeToString()


def _handler(model: str, width: int = WIDTH) -> grpc.GenericRpcHandler:
    payload = fixed_response(model, width)
    live = service_pb2.ServerLiveResponse(live=True)
    ready = service_pb2.ServerReadyResponse(ready=True)
    metadata = service_pb2.ModelMetadataResponse(name=model, versions=["1"], platform="bare")
    metadata.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, width])
    metadata.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, width])

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    async def server_live(request, context):
        return live

    async def server_ready(request, context):
        return ready

    async def model_ready(request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == model)

    async def model_metadata(request, context):
        if request.name != model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return metadata

    def typed(fn, req_cls, resp_cls):
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=req_cls.FromString,
            response_serializer=resp_cls.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, request_deserializer=None, response_serializer=None
            ),
            "ServerLive": typed(
                server_live, service_pb2.ServerLiveRequest, service_pb2.ServerLiveResponse
            ),
            "ServerReady": typed(
                server_ready, service_pb2.ServerReadyRequest, service_pb2.ServerReadyResponse
            ),
            "ModelReady": typed(
                model_ready, service_pb2.ModelReadyRequest, service_pb2.ModelReadyResponse
            ),
            "ModelMetadata": typed(
                model_metadata, service_pb2.ModelMetadataRequest, service_pb2.ModelMetadataResponse
            ),
        },
    )


async def serve_until_signalled(
    handler: grpc.GenericRpcHandler, host: str, port: int, max_message_bytes: int, name: str
) -> None:
    """Serve ``handler`` on ``host:port`` until SIGINT or SIGTERM (also ``bench.echo_server``)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"{name}: cannot bind {host}:{port}")
    await server.start()
    print(f"{name} listening on {host}:{bound}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


async def serve(host: str, port: int, model: str = MODEL, width: int = WIDTH) -> None:
    await serve_until_signalled(_handler(model, width), host, port, 64 * 1024 * 1024, "bare_server")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--width", type=int, default=WIDTH, help="FP32 values in OUTPUT0")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args.host, args.port, args.model, args.width))
    else:
        uvloop.run(serve(args.host, args.port, args.model, args.width))


if __name__ == "__main__":
    main()
