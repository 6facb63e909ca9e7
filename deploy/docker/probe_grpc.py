"""Docker health probe for the frontend: ``python probe_grpc.py [HOST:PORT]`` exits 0 when the
server's grpc.health.v1 says SERVING for the whole server (which the frontend reports only
while a broker and a worker are live), 1 otherwise. No extra binary in the image."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:8001"
TIMEOUT_S = 3.0


def check(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            print(f"{target}: {e.code().name}", file=sys.stderr)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)  # fmt: skip
    return serving


if __name__ == "__main__":
    sys.exit(0 if check(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_TARGET) else 1)
