"""The frontend's gRPC server: the inference service, grpc.health.v1 and reflection.

ModelInfer and ModelStreamInfer are registered with identity (de)serializers: request and
response bytes pass through untouched, so the frontend never decodes a tensor.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fabric.curve import fabric_security
from fabric.prom import MetricsEndpoint
from fabric.sockets import MESSAGE_SLACK_BYTES
from protos import grpc_service_pb2 as pb

from .byte_admission import grpc_receive_options
from .config import FrontendConfig
from .fabric_client import FabricClient
from .inference_service import InferenceService
from .log_settings import serve_log_settings
from .metrics import FrontendCollector, serve_metrics
from .routing.setup import RoutingSetup
from .shm import SharedMemoryService
from .triton_compat import RestrictedProtocolInterceptor, parse_restrictions

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def _typed(fn: object, request: type, response: type) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,  # type: ignore[arg-type]
        request_deserializer=request.FromString,  # type: ignore[attr-defined]
        response_serializer=response.SerializeToString,  # type: ignore[attr-defined]
    )


def inference_handlers(svc: InferenceService) -> grpc.GenericRpcHandler:
    methods = {
        "ServerLive": _typed(svc.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": _typed(svc.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ServerMetadata": _typed(
            svc.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
        ),
        "ModelReady": _typed(svc.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ModelMetadata": _typed(
            svc.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
        ),
        "ModelConfig": _typed(svc.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "RepositoryIndex": _typed(
            svc.RepositoryIndex, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
        ),
        "ModelStatistics": _typed(
            svc.ModelStatistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
        ),
        "RepositoryModelLoad": _typed(
            svc.RepositoryModelLoad, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
        ),
        "RepositoryModelUnload": _typed(
            svc.RepositoryModelUnload,
            pb.RepositoryModelUnloadRequest,
            pb.RepositoryModelUnloadResponse,
        ),
        "LogSettings": _typed(serve_log_settings, pb.LogSettingsRequest, pb.LogSettingsResponse),
        "TraceSetting": _typed(svc.TraceSetting, pb.TraceSettingRequest, pb.TraceSettingResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(svc.ModelInfer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(svc.ModelStreamInfer),
    }
    for method, (fn, request, response) in SharedMemoryService(svc.shm).handlers().items():
        methods[method] = _typed(fn, request, response)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


def package_version() -> str:
    try:
        return metadata.version("fabricserve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def server_credentials(config: FrontendConfig) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are configured; mTLS when a client CA is too."""
    if not config.tls_cert_file and not config.tls_key_file:
        if config.tls_client_ca_file:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return None
    if not (config.tls_cert_file and config.tls_key_file):
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
    key = Path(config.tls_key_file).read_bytes()
    cert = Path(config.tls_cert_file).read_bytes()
    ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class FrontendServer:
    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.client = FabricClient(
            config.brokers,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_liveness=config.heartbeat_liveness,
            max_message_bytes=config.max_message_bytes + MESSAGE_SLACK_BYTES,
            security=fabric_security(config, "frontend"),
            shm_transport=config.shm_transport == "auto",
            broker_wait_s=config.broker_wait_s,
        )
        self.service = InferenceService(config, self.client, package_version())
        # --routing: the file is read and checked here, so a bad one stops the start.
        self.routing = RoutingSetup.from_config(
            config, self.client, self.service, decisions=self.client.routes
        )
        self.health = health.aio.HealthServicer()
        self.state = State.RUNNING
        self.port = 0
        self._stop = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.metrics: MetricsEndpoint | None = None

    async def start(self) -> None:
        if self.config.metrics:  # first: a taken metrics port fails before anything binds
            svc = self.service
            self.metrics = serve_metrics(
                FrontendCollector(
                    svc.metrics,
                    lambda: dict(svc.counters),
                    lambda: {
                        "in_flight": svc.in_flight,
                        "in_flight_bytes": svc.bytes_in_flight.held_bytes,
                        "brokers_live": len(self.client.live_catalogs()),
                        "workers": self.client.workers(),
                    },
                ),
                self.config.metrics_host,
                self.config.metrics_port,
                *([self.routing.collector()] if self.routing is not None else []),
            )
        limit = self.config.max_message_bytes
        restrictions = parse_restrictions(self.config.grpc_restricted_protocol)
        max_rpcs, receive_options = grpc_receive_options(self.config.max_concurrent_rpcs)
        server = grpc.aio.server(
            # Only when some group is restricted: otherwise no call pays for an interceptor.
            interceptors=(
                [RestrictedProtocolInterceptor(SERVICE_NAME, restrictions)] if restrictions else []
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # --reuse-port: `make run FRONTENDS=n` runs replicas on one port (the kernel
                # spreads connections). Off by default so that a second frontend started on
                # a taken port fails to bind instead of silently sharing it.
                ("grpc.so_reuseport", int(self.config.reuse_port)),
                ("grpc.max_concurrent_streams", self.config.max_concurrent_streams),
                *receive_options,  # --max-concurrent-rpcs (byte_admission.py)
            ],
            maximum_concurrent_rpcs=max_rpcs,
        )
        server.add_generic_rpc_handlers((inference_handlers(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.config.host}:{self.config.port}"
        credentials = server_credentials(self.config)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {self.config.host}:{self.config.port}")
        await self.client.start()
        await server.start()
        self._server = server
        self._health_task = asyncio.create_task(self._track_health(), name="health-tracker")
        if self.routing is not None:
            self.routing.start()
        logger.info(
            "frontend serving gRPC on %s:%d, brokers %s",
            self.config.host,
            self.port,
            ", ".join(self.config.brokers),
        )

    def request_stop(self) -> None:
        """Signal-safe: records the wish; ``run_until_stopped`` does the ordered shutdown."""
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        if self.state is not State.RUNNING:
            return
        self.state = State.DRAINING
        logger.info("[shutdown] frontend: draining for up to %.1fs", self.config.shutdown_grace_s)
        if self._health_task is not None:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
        if self.routing is not None:
            await self.routing.close()
        await self.client.close()
        self.state = State.STOPPED
        logger.info("[shutdown] frontend: stopped")

    async def _track_health(self) -> None:
        serving = None
        while True:
            ready = self.service.server_ready()
            if ready != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, status)
                serving = ready
                logger.info("health: %s", "SERVING" if ready else "NOT_SERVING")
            await asyncio.sleep(min(0.5, self.config.heartbeat_interval_s))
