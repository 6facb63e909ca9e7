"""Our protos must be wire-compatible with Triton's (as shipped in tritonclient).

protobuf refuses to register the same symbol (``inference.ModelInferRequest``) from two files in
one process, so tritonclient's descriptors are read in a subprocess and compared here as plain
``FileDescriptorProto`` values; this process only ever imports our ``protos`` stubs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from google.protobuf import descriptor_pb2

from protos import grpc_service_pb2, model_config_pb2

FDP = descriptor_pb2.FileDescriptorProto
FieldProto = descriptor_pb2.FieldDescriptorProto
PACKAGE = "inference"

_DUMP_TRITON = """
import sys
import tritonclient.grpc.model_config_pb2 as m
import tritonclient.grpc.service_pb2 as s
for blob in (s.DESCRIPTOR.serialized_pb, m.DESCRIPTOR.serialized_pb):
    sys.stdout.buffer.write(len(blob).to_bytes(8, "big") + blob)
"""


def _load_triton() -> tuple[FDP, FDP]:
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP_TRITON], capture_output=True, check=False, timeout=60
    )
    assert proc.returncode == 0, f"could not read tritonclient's descriptors:\n{proc.stderr!r}"
    out, files = proc.stdout, []
    while out:
        size = int.from_bytes(out[:8], "big")
        files.append(FDP.FromString(out[8 : 8 + size]))
        out = out[8 + size :]
    assert len(files) == 2, f"expected 2 descriptors from tritonclient, got {len(files)}"
    return files[0], files[1]


def _ours() -> tuple[FDP, FDP]:
    return (
        FDP.FromString(grpc_service_pb2.DESCRIPTOR.serialized_pb),
        FDP.FromString(model_config_pb2.DESCRIPTOR.serialized_pb),
    )


# --------------------------------------------------------------------------- indexing


@dataclass
class Index:
    """Every message and enum of some files, by full name without the package."""

    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = field(default_factory=dict)


def _strip_package(type_name: str) -> str:
    prefix = f".{PACKAGE}."
    return type_name[len(prefix) :] if type_name.startswith(prefix) else type_name


def index_files(*files: FDP) -> Index:
    idx = Index()

    def add_message(msg: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}{msg.name}"
        idx.messages[name] = msg
        for enum in msg.enum_type:
            idx.enums[f"{name}.{enum.name}"] = enum
        for nested in msg.nested_type:
            add_message(nested, f"{name}.")

    for fd in files:
        assert fd.package == PACKAGE, f"{fd.name}: package is {fd.package!r}, not {PACKAGE!r}"
        for msg in fd.message_type:
            add_message(msg, "")
        for enum in fd.enum_type:
            idx.enums[enum.name] = enum
        for svc in fd.service:
            idx.services[svc.name] = svc
    return idx


def file_types(fd: FDP) -> tuple[set[str], set[str]]:
    """(messages, enums) declared in one file, nested ones included."""
    idx = index_files(fd)
    return set(idx.messages), set(idx.enums)


def reachable(idx: Index, service: str) -> tuple[set[str], set[str]]:
    """Messages and enums reachable from a service's method inputs and outputs."""
    svc = idx.services[service]
    todo = [_strip_package(t) for m in svc.method for t in (m.input_type, m.output_type)]
    messages: set[str] = set()
    enums: set[str] = set()
    while todo:
        name = todo.pop()
        if name in messages:
            continue
        messages.add(name)
        msg = idx.messages.get(name)
        if msg is None:
            continue  # reported by the comparison as a missing message
        for fld in msg.field:
            target = _strip_package(fld.type_name)
            if fld.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_GROUP):
                todo.append(target)
            elif fld.type == FieldProto.TYPE_ENUM:
                enums.add(target)
    return messages, enums


# --------------------------------------------------------------------------- comparison


def _oneof(msg: descriptor_pb2.DescriptorProto, fld: FieldProto) -> str | None:
    return msg.oneof_decl[fld.oneof_index].name if fld.HasField("oneof_index") else None


def _field_props(msg: descriptor_pb2.DescriptorProto, fld: FieldProto) -> dict[str, object]:
    return {
        "number": fld.number,
        "type": FieldProto.Type.Name(fld.type),
        "type_name": _strip_package(fld.type_name),
        "label": FieldProto.Label.Name(fld.label),
        "oneof": _oneof(msg, fld),
        "proto3_optional": fld.proto3_optional,
        "default_value": fld.default_value,
        "options": fld.options.SerializeToString(deterministic=True),
    }


def compare_message(
    name: str, ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto
) -> list[str]:
    problems = []
    if ours.options.map_entry != theirs.options.map_entry:
        problems.append(
            f"message {name}: map_entry is {ours.options.map_entry}, "
            f"Triton has {theirs.options.map_entry}"
        )
    our_fields = {f.name: f for f in ours.field}
    their_fields = {f.name: f for f in theirs.field}
    for fname in sorted(their_fields.keys() - our_fields.keys()):
        problems.append(f"message {name}: field {fname} is missing")
    for fname in sorted(our_fields.keys() - their_fields.keys()):
        problems.append(f"message {name}: field {fname} does not exist in Triton's proto")
    for fname in sorted(our_fields.keys() & their_fields.keys()):
        mine = _field_props(ours, our_fields[fname])
        ref = _field_props(theirs, their_fields[fname])
        for prop, want in ref.items():
            if mine[prop] != want:
                problems.append(
                    f"message {name}: field {fname}: {prop} is {mine[prop]!r}, Triton has {want!r}"
                )
    our_oneofs = [o.name for o in ours.oneof_decl]
    their_oneofs = [o.name for o in theirs.oneof_decl]
    if our_oneofs != their_oneofs:
        problems.append(f"message {name}: oneofs are {our_oneofs}, Triton has {their_oneofs}")
    our_nested = sorted(n.name for n in ours.nested_type)
    their_nested = sorted(n.name for n in theirs.nested_type)
    if our_nested != their_nested:
        problems.append(
            f"message {name}: nested messages are {our_nested}, Triton has {their_nested}"
        )
    our_enums = sorted(e.name for e in ours.enum_type)
    their_enums = sorted(e.name for e in theirs.enum_type)
    if our_enums != their_enums:
        problems.append(f"message {name}: nested enums are {our_enums}, Triton has {their_enums}")
    return problems


def compare_enum(
    name: str,
    ours: descriptor_pb2.EnumDescriptorProto,
    theirs: descriptor_pb2.EnumDescriptorProto,
) -> list[str]:
    problems = []
    our_values = {v.name: v.number for v in ours.value}
    their_values = {v.name: v.number for v in theirs.value}
    for vname in sorted(their_values.keys() - our_values.keys()):
        problems.append(f"enum {name}: value {vname} is missing")
    for vname in sorted(our_values.keys() - their_values.keys()):
        problems.append(f"enum {name}: value {vname} does not exist in Triton's proto")
    for vname in sorted(our_values.keys() & their_values.keys()):
        if our_values[vname] != their_values[vname]:
            problems.append(
                f"enum {name}: value {vname} is {our_values[vname]}, "
                f"Triton has {their_values[vname]}"
            )
    if ours.options.allow_alias != theirs.options.allow_alias:
        problems.append(f"enum {name}: allow_alias differs from Triton's")
    return problems


def compare_types(
    ours: Index, theirs: Index, messages: Iterable[str], enums: Iterable[str]
) -> list[str]:
    problems = []
    for name in sorted(messages):
        if name not in theirs.messages:
            problems.append(f"message {name} does not exist in Triton's proto")
        elif name not in ours.messages:
            problems.append(f"message {name} is missing")
        else:
            problems += compare_message(name, ours.messages[name], theirs.messages[name])
    for name in sorted(enums):
        if name not in theirs.enums:
            problems.append(f"enum {name} does not exist in Triton's proto")
        elif name not in ours.enums:
            problems.append(f"enum {name} is missing")
        else:
            problems += compare_enum(name, ours.enums[name], theirs.enums[name])
    return problems


def compare_service(
    name: str,
    ours: descriptor_pb2.ServiceDescriptorProto,
    theirs: descriptor_pb2.ServiceDescriptorProto,
) -> list[str]:
    problems = []
    our_methods = {m.name: m for m in ours.method}
    their_methods = {m.name: m for m in theirs.method}
    for mname in sorted(their_methods.keys() - our_methods.keys()):
        problems.append(f"service {name}: method {mname} is missing")
    for mname in sorted(our_methods.keys() - their_methods.keys()):
        problems.append(f"service {name}: method {mname} does not exist in Triton's proto")
    for mname in sorted(our_methods.keys() & their_methods.keys()):
        mine, ref = our_methods[mname], their_methods[mname]
        for prop in ("input_type", "output_type"):
            got, want = _strip_package(getattr(mine, prop)), _strip_package(getattr(ref, prop))
            if got != want:
                problems.append(
                    f"service {name}: method {mname}: {prop} is {got}, Triton has {want}"
                )
        for prop in ("client_streaming", "server_streaming"):
            got, want = getattr(mine, prop), getattr(ref, prop)
            if got != want:
                problems.append(
                    f"service {name}: method {mname}: {prop} is {got}, Triton has {want}"
                )
    return problems


def _report(problems: list[str]) -> str:
    return f"{len(problems)} incompatibilities with Triton:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def triton() -> tuple[FDP, FDP]:
    return _load_triton()


@pytest.fixture(scope="module")
def triton_index(triton: tuple[FDP, FDP]) -> Index:
    return index_files(*triton)


@pytest.fixture(scope="module")
def our_index() -> Index:
    return index_files(*_ours())


SERVICE = "GRPCInferenceService"
EXPECTED_METHODS = {
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
    "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
}  # fmt: skip


# --------------------------------------------------------------------------- tests


def test_file_headers() -> None:
    service, config = _ours()
    # Triton's own file names: protoc ran with -I protos, as Triton builds them.
    assert (service.name, config.name) == ("grpc_service.proto", "model_config.proto")
    for fd in (service, config):
        assert fd.syntax == "proto3", fd.name
        assert fd.package == PACKAGE, fd.name
    assert list(service.dependency) == ["model_config.proto"]
    assert list(config.dependency) == []


def test_service_methods_match(our_index: Index, triton_index: Index) -> None:
    assert set(our_index.services) == {SERVICE} == set(triton_index.services)
    assert {m.name for m in our_index.services[SERVICE].method} >= EXPECTED_METHODS
    problems = compare_service(SERVICE, our_index.services[SERVICE], triton_index.services[SERVICE])
    assert not problems, _report(problems)
    stream = next(m for m in our_index.services[SERVICE].method if m.name == "ModelStreamInfer")
    assert stream.client_streaming and stream.server_streaming


def test_messages_reachable_from_service_match(our_index: Index, triton_index: Index) -> None:
    our_msgs, our_enums = reachable(our_index, SERVICE)
    their_msgs, their_enums = reachable(triton_index, SERVICE)
    # Sanity: the walk really crosses into model_config and down to nested types.
    assert {
        "ModelInferRequest.InferInputTensor",
        "ModelConfig",
        "InferTensorContents",
    } <= their_msgs
    assert "DataType" in their_enums
    problems = compare_types(
        our_index, triton_index, our_msgs | their_msgs, our_enums | their_enums
    )
    assert not problems, _report(problems)


@pytest.mark.parametrize("which", ["grpc_service", "model_config"])
def test_every_declared_type_matches(
    which: str, triton: tuple[FDP, FDP], our_index: Index, triton_index: Index
) -> None:
    pos = 0 if which == "grpc_service" else 1
    our_msgs, our_enums = file_types(_ours()[pos])
    their_msgs, their_enums = file_types(triton[pos])
    assert len(their_msgs) > 10, f"suspiciously few messages in Triton's {which}"
    problems = compare_types(
        our_index, triton_index, our_msgs | their_msgs, our_enums | their_enums
    )
    # A type declared in the wrong one of the two files changes its fully qualified file, which
    # protobuf tolerates on the wire but generated imports do not.
    for name in sorted((their_msgs - our_msgs) | (their_enums - our_enums)):
        problems.append(
            f"{name} belongs in {which}.proto, as in Triton's, but is not declared there"
        )
    for name in sorted((our_msgs - their_msgs) | (our_enums - their_enums)):
        problems.append(f"{name} is declared in {which}.proto, but Triton declares it elsewhere")
    assert not problems, _report(problems)


def test_model_config_round_trips_a_realistic_config() -> None:
    cfg = model_config_pb2.ModelConfig(
        name="resnet",
        platform="pytorch_libtorch",
        max_batch_size=8,
        input=[model_config_pb2.ModelInput(name="x", data_type=model_config_pb2.TYPE_FP32,
                                           dims=[3, 224, 224])],
        dynamic_batching=model_config_pb2.ModelDynamicBatching(
            preferred_batch_size=[4, 8], max_queue_delay_microseconds=100
        ),
        instance_group=[model_config_pb2.ModelInstanceGroup(
            count=2, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=[0])],
    )  # fmt: skip
    cfg.parameters["k"].string_value = "v"
    resp = grpc_service_pb2.ModelConfigResponse(config=cfg)
    again = grpc_service_pb2.ModelConfigResponse.FromString(resp.SerializeToString())
    assert again == resp
    assert again.config.parameters["k"].string_value == "v"


# ------------------------------------------------- the comparison itself must catch mutations


Mutation = Callable[[FDP, FDP], None]


def _mutated(mutate: Mutation) -> Index:
    service, config = _ours()
    mutate(service, config)
    return index_files(service, config)


def _msg(fd: FDP, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for m in fd.message_type if m.name == name)


def _fld(msg: descriptor_pb2.DescriptorProto, name: str) -> FieldProto:
    return next(f for f in msg.field if f.name == name)


def _problems(idx: Index, triton_index: Index) -> list[str]:
    msgs, enums = reachable(idx, SERVICE)
    all_msgs = set(idx.messages) | set(triton_index.messages)
    all_enums = set(idx.enums) | set(triton_index.enums) | enums
    return compare_types(idx, triton_index, all_msgs | msgs, all_enums) + compare_service(
        SERVICE, idx.services[SERVICE], triton_index.services[SERVICE]
    )


def test_unmutated_descriptors_have_no_problems(our_index: Index, triton_index: Index) -> None:
    assert _problems(our_index, triton_index) == []


def _renumber(s: FDP, c: FDP) -> None:
    _fld(_msg(s, "ModelInferRequest"), "raw_input_contents").number = 99


def _retype(s: FDP, c: FDP) -> None:
    _fld(_msg(c, "ModelConfig"), "max_batch_size").type = FieldProto.TYPE_INT64


def _relabel(s: FDP, c: FDP) -> None:
    _fld(_msg(s, "ServerMetadataResponse"), "extensions").label = FieldProto.LABEL_OPTIONAL


def _leave_oneof(s: FDP, c: FDP) -> None:
    _fld(_msg(s, "InferParameter"), "bool_param").ClearField("oneof_index")


def _nested_field(s: FDP, c: FDP) -> None:
    tensor = next(n for n in _msg(s, "ModelInferRequest").nested_type
                  if n.name == "InferInputTensor")  # fmt: skip
    _fld(tensor, "shape").number = 7


def _enum_value(s: FDP, c: FDP) -> None:
    next(v for v in c.enum_type[0].value if v.name == "TYPE_FP32").number = 42


def _not_a_map(s: FDP, c: FDP) -> None:
    entry = next(n for n in _msg(s, "ModelInferRequest").nested_type
                 if n.name == "ParametersEntry")  # fmt: skip
    entry.options.map_entry = False


def _drop_field(s: FDP, c: FDP) -> None:
    msg = _msg(c, "ModelConfig")
    keep = [f for f in msg.field if f.name != "response_cache"]
    del msg.field[:]
    msg.field.extend(keep)


def _unstream(s: FDP, c: FDP) -> None:
    next(m for m in s.service[0].method if m.name == "ModelStreamInfer").client_streaming = False


def _wrong_output(s: FDP, c: FDP) -> None:
    method = next(m for m in s.service[0].method if m.name == "ModelInfer")
    method.output_type = ".inference.ModelStreamInferResponse"


def _drop_method(s: FDP, c: FDP) -> None:
    keep = [m for m in s.service[0].method if m.name != "LogSettings"]
    del s.service[0].method[:]
    s.service[0].method.extend(keep)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_renumber, "message ModelInferRequest: field raw_input_contents: number is 99"),
        (_retype, "message ModelConfig: field max_batch_size: type is 'TYPE_INT64'"),
        (_relabel, "message ServerMetadataResponse: field extensions: label is 'LABEL_OPTIONAL'"),
        (_leave_oneof, "message InferParameter: field bool_param: oneof is None"),
        (_nested_field, "message ModelInferRequest.InferInputTensor: field shape: number is 7"),
        (_enum_value, "enum DataType: value TYPE_FP32 is 42"),
        (_not_a_map, "message ModelInferRequest.ParametersEntry: map_entry is False"),
        (_drop_field, "message ModelConfig: field response_cache is missing"),
        (_unstream, "method ModelStreamInfer: client_streaming is False"),
        (_wrong_output, "method ModelInfer: output_type is ModelStreamInferResponse"),
        (_drop_method, "method LogSettings is missing"),
    ],
)
def test_comparison_catches_mutation(mutate: Mutation, expected: str, triton_index: Index) -> None:
    problems = _problems(_mutated(mutate), triton_index)
    assert any(expected in p for p in problems), _report(problems)
