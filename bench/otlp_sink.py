"""An OTLP/gRPC trace sink for ``make bench``'s ``ours_traced``: a TraceService that accepts
and counts spans (as a collector would receive them) and prints the count when stopped.

    python -m bench.otlp_sink --port N
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
            self.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    sink = CountingSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(f"127.0.0.1:{args.port}") == 0:
        print(f"otlp sink: cannot bind port {args.port}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"otlp sink listening on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.stop(grace=1.0).wait()
    print(f"otlp sink: {sink.spans} spans in {sink.requests} export requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
