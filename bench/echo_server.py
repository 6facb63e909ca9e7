"""The ceiling for large tensors: a bare grpc.aio server whose ModelInfer returns its input.

ModelInfer uses identity (de)serializers, and the response is made from the request's bytes
without protobuf: each ``raw_input_contents`` entry becomes a ``raw_output_contents`` entry and
each input an output of the same datatype and shape (named OUTPUTn for INPUTn), joined into one
``bytes`` (one copy of the tensor data, the least a Python server can do). It also answers
ServerLive, ServerReady, ModelReady and ModelMetadata for ``identity_fp32`` so that the same
client and readiness check work against it and our stack. Never imports our packages.

    python -m bench.echo_server --port 8001 [--host 127.0.0.1] [--max-message-bytes N]
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from tritonclient.grpc import service_pb2

from bench.bare_server import serve_until_signalled
from fabric.pbwire import encode_varint, read_varint

SERVICE = "inference.GRPCInferenceService"
MODEL = "identity_fp32"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def echo(request: bytes) -> bytes:
    """A ModelInferResponse returning the request's inputs as outputs."""
    view = memoryview(request)
    pos, end = 0, len(view)
    inputs: list[memoryview] = []
    raw: list[memoryview] = []
    while pos < end:
        tag, pos = read_varint(view, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = read_varint(view, pos)
            if number == 5:
                inputs.append(view[pos : pos + length])
            elif number == 7:
                raw.append(view[pos : pos + length])
            pos += length
        elif wire == 0:
            _, pos = read_varint(view, pos)
        else:
            pos += 8 if wire == 1 else 4
    head = service_pb2.ModelInferResponse(model_name=MODEL, model_version="1")
    for i, tensor_bytes in enumerate(inputs):
        tensor = service_pb2.ModelInferRequest.InferInputTensor.FromString(tensor_bytes)
        head.outputs.add(name=f"OUTPUT{i}", datatype=tensor.datatype, shape=tensor.shape)
    parts: list[bytes | memoryview] = [head.SerializeToString()]
    for r in raw:
        parts += [b"\x32", encode_varint(len(r)), r]
    return b"".join(parts)


def _handler() -> grpc.GenericRpcHandler:
    metadata = service_pb2.ModelMetadataResponse(name=MODEL, versions=["1"], platform="bare")
    metadata.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, -1])
    metadata.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, -1])

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return echo(request)

    async def server_live(request: object, context: object) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def server_ready(request: object, context: object) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def model_ready(
        request: service_pb2.ModelReadyRequest, context: object
    ) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=request.name == MODEL)

    async def model_metadata(request: object, context: object) -> service_pb2.ModelMetadataResponse:
        return metadata

    def typed(fn: object, req: type, resp: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn,  # type: ignore[arg-type]
            request_deserializer=req.FromString,  # type: ignore[attr-defined]
            response_serializer=resp.SerializeToString,  # type: ignore[attr-defined]
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),
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


async def serve(host: str, port: int, max_message_bytes: int) -> None:
    await serve_until_signalled(_handler(), host, port, max_message_bytes, "echo_server")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args.host, args.port, args.max_message_bytes))
    else:
        uvloop.run(serve(args.host, args.port, args.max_message_bytes))


if __name__ == "__main__":
    main()
