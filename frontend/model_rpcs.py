"""The model and repository RPCs of ``inference.GRPCInferenceService``: readiness, metadata
and config from the brokers' catalogs, the repository index, statistics, load/unload and
TraceSetting. ``InferenceService`` (inference_service.py) inherits them."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from fabric import errors, names
from fabric import triton_errors as texts
from fabric.errors import RequestError
from fabric.versions import version_sort_key
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

from .config import FrontendConfig
from .fabric_client import FabricClient
from .routing.router import Router
from .statistics import merge_statistics
from .status import grpc_code
from .trace_settings import TraceSettings
from .trace_settings import answer as answer_trace_setting
from .triton_compat import check_control, merge_index


def _datatype(dt: int) -> str:
    name = mc.DataType.Name(dt)
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


class ModelRpcs:
    """RPCs that answer from the catalogs or fan a control operation out to the workers."""

    config: FrontendConfig
    client: FabricClient
    router: Router | None
    trace_settings: TraceSettings

    # ---- models ---------------------------------------------------------------------
    def _config(self, name: str, version: str, context: grpc.aio.ServicerContext) -> mc.ModelConfig:
        models = self.client.models()
        versions = {v: (e, n) for (m, v), (e, n) in models.items() if m == name}
        if not versions:
            raise RequestError(errors.NOT_FOUND, texts.unknown_model(name))
        if version:
            if version not in versions:
                raise RequestError(errors.NOT_FOUND, texts.unknown_version(name, version))
            entry = versions[version][0]
        else:
            ready = [v for v, (_, n) in versions.items() if n > 0] or list(versions)
            entry = versions[max(ready, key=version_sort_key)][0]
        try:
            return mc.ModelConfig.FromString(entry.config)
        except DecodeError as exc:
            raise RequestError(
                errors.INTERNAL, f"model {names.quote(name)}: bad config announced"
            ) from exc

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            names.check_model(request.name, request.version, "name")
            texts.parse_version(request.version)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        models = self.client.models()
        name, version = request.name, request.version
        if self.router is not None and name in self.router.routes:
            if not version:
                return pb.ModelReadyResponse(ready=self.router.ready(name, models))
            name, version = self.router.answer_for(name, version)
        ready = any(
            n > 0
            for (m, v), (_, n) in models.items()
            if m == name and (not version or v == version)
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        config = await self._config_or_abort(request.name, request.version, context)
        known = {v: n for (m, v), (_, n) in self.client.models().items() if m == config.name}
        ready = [v for v, n in known.items() if n > 0]
        versions = sorted(ready or known, key=version_sort_key)
        batch = [-1] if config.max_batch_size > 0 else []

        def tensors(specs: object) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=_datatype(t.data_type), shape=[*batch, *t.dims]
                )
                for t in specs  # type: ignore[attr-defined]
            ]

        return pb.ModelMetadataResponse(
            name=config.name,
            versions=versions,
            platform=config.platform or config.backend or "pytorch",
            inputs=tensors(config.input),
            outputs=tensors(config.output),
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        config = await self._config_or_abort(request.name, request.version, context)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        catalog = [(n, v, w) for (n, v), (_, w) in self.client.models().items()]
        timeout = self.config.control_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        try:  # each worker's view adds unloaded and failed models with their reasons
            replies = await self.client.control("index", "", "", timeout)
        except RequestError:
            replies = []  # no broker or worker reachable: the catalog is all there is
        indexes = [
            pb.RepositoryIndexResponse.FromString(body)
            for r in replies
            if r.status == errors.OK
            for body in r.bodies
        ]
        out = merge_index(catalog, indexes, request.ready)
        if self.router is not None:  # public names that are not model names
            for name, ready in self.router.index(self.client.models(), request.ready):
                out.models.add(name=name, state="READY" if ready else "UNAVAILABLE")
        return out

    async def _config_or_abort(
        self, name: str, version: str, context: grpc.aio.ServicerContext
    ) -> mc.ModelConfig:
        if not self.client.gate.open:  # no worker reachable yet (brokers.py BrokerGate)
            await self.client.gate.wait(context.time_remaining())
        try:
            names.check_model(name, version, "name")
            texts.parse_version(version)
            if self.router is not None:
                name, version = self.router.answer_for(name, version)
            return self._config(name, version, context)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
            raise  # unreachable: abort raises

    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        models = {name for name, _ in self.client.models()}
        try:
            return answer_trace_setting(self.trace_settings, request, models)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
            raise  # unreachable: abort raises

    # ---- statistics and repository control ------------------------------------------------
    async def _control(
        self,
        op: str,
        model: str,
        version: str,
        context: grpc.aio.ServicerContext,
        body: bytes = b"",
    ) -> list[bytes]:
        timeout = self.config.control_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        try:
            replies = await self.client.control(op, model, version, timeout, body)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        failed = [r for r in replies if r.status != errors.OK]
        if failed:
            await context.abort(grpc_code(failed[0].status), failed[0].message or failed[0].status)
        return [body for r in replies for body in r.bodies]

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            await self._config_or_abort(request.name, request.version, context)
        bodies = await self._control("statistics", request.name, request.version, context)
        return merge_statistics([pb.ModelStatisticsResponse.FromString(b) for b in bodies])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._check_or_abort(request.model_name, context, control=True)
        # With a config override or files, workers get the whole request (worker.overrides).
        body = request.SerializeToString() if request.parameters else b""
        await self._control("load", request.model_name, "", context, body)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._check_or_abort(request.model_name, context, control=True)
        await self._control("unload", request.model_name, "", context)
        return pb.RepositoryModelUnloadResponse()

    async def _check_or_abort(
        self, model_name: str, context: grpc.aio.ServicerContext, control: bool = False
    ) -> None:
        try:
            if control:
                check_control(self.config.model_control_mode)
            names.check_model(model_name)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
