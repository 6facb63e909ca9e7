"""System shared memory, the frontend's part: the region registry, its RPCs, and turning the
region names a request uses into references a worker may map.

A client on the same host puts tensors in a POSIX shared memory object and registers a region
of it (``SystemSharedMemoryRegister``: name, key, offset, byte size); requests then name the
region in an input's or requested output's ``shared_memory_region`` / ``_offset`` /
``_byte_size`` parameters instead of carrying bytes. Here names and keys are validated (a key is
one file name under ``/dev/shm``: no path, no ``..``, no symlink), the region is checked against
the object's real size, and for each request the regions it names are resolved into
``ShmRef``s (key, absolute offset, size) that travel in the request header: the worker never
maps anything a client names directly. Error codes and texts are Triton's.

CUDA shared memory is not served (the frontend has no GPU and never imports torch): status and
unregister succeed with nothing registered, register answers UNIMPLEMENTED saying so.

The registry is per frontend process, as Triton's is per server: a client registers with the
frontend it calls (``make run`` with several frontends behind one port needs sticky
connections for shared memory, which a gRPC channel is).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from fabric.errors import (
    ALREADY_EXISTS,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    RequestError,
)
from fabric.pbwire import read_varint
from fabric.protocol import ShmRef
from protos import grpc_service_pb2 as pb

from .status import grpc_code
from .wire import RequestRoute

SHM_DIR = Path("/dev/shm")
NAME_MAX_CHARS = 256
REGIONS_MAX = 4096
"""Regions one frontend holds at once: clients choose names, memory stays bounded."""
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_INPUTS, _OUTPUTS = 5, 6  # ModelInferRequest fields
_REGION, _OFFSET, _BYTE_SIZE = (
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
)

StatFn = Callable[[Path], os.stat_result]


def _lstat(path: Path) -> os.stat_result:
    return os.stat(path, follow_symlinks=False)


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int


def check_name(name: str) -> None:
    if not name or len(name) > NAME_MAX_CHARS or not name.isprintable():
        raise RequestError(
            INVALID_ARGUMENT,
            f"invalid shared memory region name '{name[:NAME_MAX_CHARS]}': 1 to "
            f"{NAME_MAX_CHARS} printable characters",
        )


def object_name(key: str) -> str:
    """The file name under /dev/shm for a POSIX shared memory key (``/name`` or ``name``)."""
    name = key.removeprefix("/")
    if not name or len(name) > 250 or name in (".", "..") or not set(name) <= _KEY_CHARS:
        raise RequestError(
            INVALID_ARGUMENT,
            f"invalid shared memory key '{key[:NAME_MAX_CHARS]}': a POSIX shared memory name "
            "is an optional '/' then letters, digits, '.', '_' or '-'",
        )
    return name


class SharedMemoryRegistry:
    """Registered system shared memory regions, by name. ``stat`` is injected for tests."""

    def __init__(self, shm_dir: Path = SHM_DIR, stat_fn: StatFn = _lstat) -> None:
        self.regions: dict[str, Region] = {}
        self._dir = shm_dir
        self._stat = stat_fn

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        check_name(name)
        path = self._dir / object_name(key)
        if name in self.regions:
            raise RequestError(ALREADY_EXISTS, f"shared memory region '{name}' already in manager")
        if len(self.regions) >= REGIONS_MAX:
            raise RequestError(
                RESOURCE_EXHAUSTED, f"{REGIONS_MAX} shared memory regions are registered"
            )
        try:
            st = self._stat(path)
        except OSError as exc:
            raise RequestError(INTERNAL, f"Unable to open shared memory region: '{key}'") from exc
        if not stat.S_ISREG(st.st_mode):  # a symlink or device planted under /dev/shm
            raise RequestError(INTERNAL, f"Invalid shared memory region: '{key}'")
        if byte_size <= 0 or offset + byte_size > st.st_size:
            raise RequestError(
                INVALID_ARGUMENT, f"failed to register shared memory region '{name}': invalid args"
            )
        self.regions[name] = Region(name, key, offset, byte_size)

    def unregister(self, name: str) -> None:
        """Forget ``name`` ("" = every region); an unknown name is no error, as in Triton."""
        if name:
            self.regions.pop(name, None)
        else:
            self.regions.clear()

    def status(self, name: str) -> list[Region]:
        if not name:
            return list(self.regions.values())
        region = self.regions.get(name)
        if region is None:
            raise RequestError(NOT_FOUND, f"Unable to find system shared memory region: '{name}'")
        return [region]

    # ---- per request ----------------------------------------------------------------------
    def resolve(self, route: RequestRoute, data: bytes | memoryview) -> RequestRoute:
        """``route`` with the request's shared memory tensors resolved (bounds checked)."""
        refs: list[ShmRef] = []
        for number, body in _tensor_fields(data):
            output = number == _OUTPUTS
            tensor = (
                pb.ModelInferRequest.InferRequestedOutputTensor()
                if output
                else pb.ModelInferRequest.InferInputTensor()
            )
            tensor.ParseFromString(body)
            if not tensor.parameters or _REGION not in tensor.parameters:
                continue  # without a region the worker explains any stray offset or size
            refs.append(self._ref(tensor.name, output, tensor.parameters))
        return dataclasses.replace(route, shm=tuple(refs)) if refs else route

    def _ref(self, tensor: str, output: bool, params: Mapping[str, pb.InferParameter]) -> ShmRef:
        name = _str_param(params, _REGION, tensor)
        if _BYTE_SIZE not in params:
            raise RequestError(
                INVALID_ARGUMENT,
                f"'{_BYTE_SIZE}' must be specified along with '{_REGION}' parameter for tensor "
                f"'{tensor}'",
            )
        byte_size = _int_param(params, _BYTE_SIZE, tensor)
        offset = _int_param(params, _OFFSET, tensor) if _OFFSET in params else 0
        region = self.regions.get(name)
        if region is None:
            raise RequestError(NOT_FOUND, f"Unable to find shared memory region: '{name}'")
        if offset < 0 or offset >= region.byte_size:
            raise RequestError(
                INVALID_ARGUMENT, f"Invalid offset for shared memory region: '{name}'"
            )
        if byte_size < 0 or offset + byte_size > region.byte_size:
            raise RequestError(
                INVALID_ARGUMENT, f"Invalid offset + byte size for shared memory region: '{name}'"
            )
        return ShmRef(tensor, output, region.key, region.offset + offset, byte_size)


def _check_kind(value: pb.InferParameter, key: str, kind: str, tensor: str) -> None:
    if value.WhichOneof("parameter_choice") != kind:
        raise RequestError(
            INVALID_ARGUMENT,
            f"invalid value type for '{key}' parameter for tensor '{tensor}', expected {kind}.",
        )


def _str_param(params: Mapping[str, pb.InferParameter], key: str, tensor: str) -> str:
    value = params[key]
    _check_kind(value, key, "string_param", tensor)
    return value.string_param


def _int_param(params: Mapping[str, pb.InferParameter], key: str, tensor: str) -> int:
    value = params[key]
    _check_kind(value, key, "int64_param", tensor)
    return value.int64_param


def _tensor_fields(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """The serialized ``inputs`` and ``outputs`` entries of a ModelInferRequest, without
    parsing (or copying) its raw tensor contents."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        tag, pos = read_varint(view, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise RequestError(INVALID_ARGUMENT, "malformed ModelInferRequest: truncated")
            if number in (_INPUTS, _OUTPUTS):
                yield number, view[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = read_varint(view, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise RequestError(INVALID_ARGUMENT, f"malformed ModelInferRequest: wire type {wire}")


class SharedMemoryService:
    """The six shared memory RPCs of ``inference.GRPCInferenceService``."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self.registry = registry

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        try:
            self.registry.register(request.name, request.key, request.offset, request.byte_size)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        try:
            regions = self.registry.status(request.name)
        except RequestError as exc:
            await context.abort(grpc_code(exc.code), exc.message)
        response = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            response.regions[r.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return response

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.registry.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        await context.abort(
            grpc_code(UNIMPLEMENTED),
            f"failed to register CUDA shared memory region '{request.name[:NAME_MAX_CHARS]}': "
            "CUDA shared memory is not supported by this server; use system shared memory",
        )
        return pb.CudaSharedMemoryRegisterResponse()  # not reached: abort raises

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            await context.abort(
                grpc_code(NOT_FOUND),
                f"Unable to find cuda shared memory region: '{request.name[:NAME_MAX_CHARS]}'",
            )
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()

    def handlers(self) -> dict[str, tuple[object, type, type]]:
        """Method name → (handler, request type, response type), for the server to register."""
        return {
            "SystemSharedMemoryRegister": (
                self.SystemSharedMemoryRegister,
                pb.SystemSharedMemoryRegisterRequest,
                pb.SystemSharedMemoryRegisterResponse,
            ),
            "SystemSharedMemoryStatus": (
                self.SystemSharedMemoryStatus,
                pb.SystemSharedMemoryStatusRequest,
                pb.SystemSharedMemoryStatusResponse,
            ),
            "SystemSharedMemoryUnregister": (
                self.SystemSharedMemoryUnregister,
                pb.SystemSharedMemoryUnregisterRequest,
                pb.SystemSharedMemoryUnregisterResponse,
            ),
            "CudaSharedMemoryRegister": (
                self.CudaSharedMemoryRegister,
                pb.CudaSharedMemoryRegisterRequest,
                pb.CudaSharedMemoryRegisterResponse,
            ),
            "CudaSharedMemoryStatus": (
                self.CudaSharedMemoryStatus,
                pb.CudaSharedMemoryStatusRequest,
                pb.CudaSharedMemoryStatusResponse,
            ),
            "CudaSharedMemoryUnregister": (
                self.CudaSharedMemoryUnregister,
                pb.CudaSharedMemoryUnregisterRequest,
                pb.CudaSharedMemoryUnregisterResponse,
            ),
        }
