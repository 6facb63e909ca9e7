"""Bad-input fuzzing over raw ``ModelInferRequest`` messages (tritonclient's copy of the protos).

Hypothesis builds a valid request for one of four models, then (most of the time) breaks it
with one to three mutations, each of which alone makes the request invalid: wrong datatype,
rank or dim, batch size out of range, negative or huge dims, byte size not matching the shape,
missing / extra / duplicate inputs, raw and typed contents both set, raw entries not matching
the inputs, unknown model or version, unknown or duplicate requested outputs, shared-memory
parameters, non-UTF-8 BYTES where the model parses text, and messages over the frontend's
``--max-message-bytes``. A second fuzzer sends arbitrary and corrupted bytes.

Every call must end at once with a status its mutations allow (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED; INTERNAL only from ``faulty`` refusing a negative input) and a non-empty
message; a valid request must get the right answer; and after each call a valid request to
``simple`` must succeed. Violations are collected over all examples, then reported together.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.faults.conftest import Chaos
from tests.faults.harness import LOST, OK, Call, FaultStack
from tests.integration.stack import SMALL_MAX_MESSAGE_BYTES

STRUCTURED_EXAMPLES = 600
RAW_EXAMPLES = 150
CALL_TIMEOUT_S = 5.0
"""Every call here must be answered in milliseconds; one that takes this long is a hang."""
INVALID = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
EXHAUSTED = "RESOURCE_EXHAUSTED"
INTERNAL = "INTERNAL"
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES", "", "int32", "STRING", "TYPE_INT32",
)  # fmt: skip
TAKEN_NAMES = frozenset(
    {"simple", "simple_string", "faulty", "varlen", "work", "busy", "slow_deadline",
     "slow_cancel", "mlp"}
)  # fmt: skip
MODEL_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class TensorDef:
    name: str
    datatype: str
    dims: tuple[int, ...]  # -1 = variable


@dataclass(frozen=True)
class ModelDef:
    name: str
    inputs: tuple[TensorDef, ...]
    outputs: tuple[str, ...]
    max_batch: int


MODELS = {
    m.name: m
    for m in (
        ModelDef(
            "simple",
            (TensorDef("INPUT0", "INT32", (16,)), TensorDef("INPUT1", "INT32", (16,))),
            ("OUTPUT0", "OUTPUT1"),
            8,
        ),
        ModelDef(
            "simple_string",
            (TensorDef("INPUT0", "BYTES", (16,)), TensorDef("INPUT1", "BYTES", (16,))),
            ("OUTPUT0", "OUTPUT1"),
            8,
        ),
        ModelDef("faulty", (TensorDef("INPUT0", "INT32", (4,)),), ("OUTPUT0",), 8),
        ModelDef(
            "varlen",
            (TensorDef("INPUT0", "INT32", (-1,)), TensorDef("TEXT", "BYTES", (-1,))),
            ("OUTPUT0", "TEXT_OUT"),
            8,
        ),
    )
}


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


@dataclass
class Case:
    """A request, the statuses it may end with, and for valid ones the expected outputs."""

    model: ModelDef
    request: service_pb2.ModelInferRequest
    raw: bool
    values: dict[str, np.ndarray]  # per input, for computing expected outputs
    allowed: set[str] = field(default_factory=lambda: {OK})
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        r = self.request
        tensors = ", ".join(f"{t.name}:{t.datatype}{list(t.shape)}" for t in r.inputs)
        return (
            f"model={r.model_name!r} v={r.model_version!r} [{tensors}] "
            f"raw={len(r.raw_input_contents)} mutations={self.mutations} size={r.ByteSize()}"
        )


# -- valid requests -----------------------------------------------------------------------------


@st.composite
def valid_cases(draw: st.DrawFn) -> Case:
    model = MODELS[draw(st.sampled_from(sorted(MODELS)))]
    batch = draw(st.integers(1, model.max_batch))
    raw = draw(st.booleans())
    request = service_pb2.ModelInferRequest(model_name=model.name)
    if draw(st.booleans()):
        request.model_version = "1"
    values: dict[str, np.ndarray] = {}
    for tdef in model.inputs:
        shape = [batch, *(d if d > 0 else draw(st.integers(1, 4)) for d in tdef.dims)]
        count = int(np.prod(shape))
        tensor = request.inputs.add(name=tdef.name, datatype=tdef.datatype, shape=shape)
        if tdef.datatype == "INT32":
            low, high = (-20, 100) if model.name == "faulty" else (-(2**30), 2**30)
            ints = draw(st.lists(st.integers(low, high), min_size=count, max_size=count))
            array = np.array(ints, dtype=np.int32).reshape(shape)
            if raw:
                request.raw_input_contents.append(array.astype("<i4").tobytes())
            else:
                tensor.contents.int_contents.extend(ints)
        else:
            if model.name == "simple_string":
                ints = draw(st.lists(st.integers(-(2**30), 2**30), min_size=count, max_size=count))
                items = [str(v).encode() for v in ints]
            else:  # BYTES are bytes: any value, UTF-8 or not, goes through unchanged
                items = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
            array = np.array([*items, None], dtype=object)[:-1].reshape(shape)
            if raw:
                request.raw_input_contents.append(encode_bytes(items))
            else:
                tensor.contents.bytes_contents.extend(items)
        values[tdef.name] = array
    case = Case(model, request, raw, values)
    if model.name == "faulty" and (values["INPUT0"] < 0).any():
        case.allowed = {INTERNAL}
    if draw(st.booleans()):
        names = draw(st.permutations(model.outputs))
        for name in names[: draw(st.integers(1, len(names)))]:
            request.outputs.add(name=name)
    return case


def expected_outputs(case: Case) -> dict[str, list[object]]:
    v = case.values
    name = case.model.name
    if name == "simple":
        a, b = v["INPUT0"].astype(np.int64), v["INPUT1"].astype(np.int64)
        out = {"OUTPUT0": (a + b).astype(np.int32), "OUTPUT1": (a - b).astype(np.int32)}
    elif name == "simple_string":
        a = np.vectorize(lambda s: int(s), otypes=[object])(v["INPUT0"])
        b = np.vectorize(lambda s: int(s), otypes=[object])(v["INPUT1"])
        out = {"OUTPUT0": a + b, "OUTPUT1": a - b}
        out = {
            k: np.vectorize(lambda x: str(x).encode(), otypes=[object])(x) for k, x in out.items()
        }
    elif name == "faulty":
        out = {"OUTPUT0": (v["INPUT0"] * 2).astype(np.int32)}
    else:
        out = {"OUTPUT0": v["INPUT0"], "TEXT_OUT": v["TEXT"]}
    requested = [o.name for o in case.request.outputs] or list(case.model.outputs)
    return {k: out[k].reshape(-1).tolist() for k in requested}


def response_outputs(response: service_pb2.ModelInferResponse) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    raw = list(response.raw_output_contents)
    for i, tensor in enumerate(response.outputs):
        if raw:
            if tensor.datatype == "BYTES":
                out[tensor.name] = list(decode_bytes(raw[i]))
            else:
                out[tensor.name] = np.frombuffer(raw[i], dtype="<i4").tolist()
        elif tensor.datatype == "BYTES":
            out[tensor.name] = list(tensor.contents.bytes_contents)
        else:
            out[tensor.name] = list(tensor.contents.int_contents)
    return out


# -- mutations: each alone makes the request invalid --------------------------------------------


def _pick(draw: st.DrawFn, case: Case) -> service_pb2.ModelInferRequest.InferInputTensor | None:
    inputs = case.request.inputs
    return inputs[draw(st.integers(0, len(inputs) - 1))] if len(inputs) else None


def m_datatype(draw: st.DrawFn, case: Case) -> set[str]:
    t = _pick(draw, case)
    if t is not None:
        t.datatype = draw(st.sampled_from([d for d in DATATYPES if d != t.datatype]))
    return {INVALID}


def m_rank(draw: st.DrawFn, case: Case) -> set[str]:
    t = _pick(draw, case)
    if t is not None:
        if len(t.shape) > 1 and draw(st.booleans()):
            del t.shape[-1]
        else:
            t.shape.append(draw(st.integers(1, 4)))
    return {INVALID}


def m_dim(draw: st.DrawFn, case: Case) -> set[str]:
    t = _pick(draw, case)
    if t is not None:
        tdef = next((d for d in case.model.inputs if d.name == t.name), None)
        fixed = [i + 1 for i, d in enumerate(tdef.dims) if d > 0] if tdef else []
        fixed = [i for i in fixed if i < len(t.shape)]
        if fixed:
            i = draw(st.sampled_from(fixed))
            t.shape[i] = draw(st.integers(1, 64).filter(lambda v, w=t.shape[i]: v != w))
        elif t.shape:
            t.shape[0] = case.model.max_batch + draw(st.integers(1, 100))
    return {INVALID}


def m_batch(draw: st.DrawFn, case: Case) -> set[str]:
    for t in case.request.inputs:  # all inputs, so that they still agree with each other
        if not t.shape:
            t.shape.append(0)
    size = draw(st.sampled_from([0, case.model.max_batch + 1, 1000, 2**31, 2**62]))
    t = _pick(draw, case)
    if t is not None:
        t.shape[0] = size
    return {INVALID}


def m_negative(draw: st.DrawFn, case: Case) -> set[str]:
    t = _pick(draw, case)
    if t is not None and t.shape:
        t.shape[draw(st.integers(0, len(t.shape) - 1))] = draw(st.integers(-(2**63), -1))
    return {INVALID}


def m_huge(draw: st.DrawFn, case: Case) -> set[str]:
    # At least 2**40 elements: a server that allocates before checking fails at once instead
    # of filling the test machine's memory.
    t = _pick(draw, case)
    if t is not None and t.shape:
        t.shape[draw(st.integers(0, len(t.shape) - 1))] = draw(st.integers(2**40, 2**63 - 1))
    return {INVALID}


def m_byte_size(draw: st.DrawFn, case: Case) -> set[str]:
    r = case.request
    if case.raw and len(r.raw_input_contents):
        i = draw(st.integers(0, len(r.raw_input_contents) - 1))
        data = r.raw_input_contents[i]
        if data and draw(st.booleans()):
            r.raw_input_contents[i] = data[: -draw(st.integers(1, len(data)))]
        else:
            r.raw_input_contents[i] = data + draw(st.binary(min_size=1, max_size=16))
    else:
        t = _pick(draw, case)
        if t is not None:
            values = t.contents.bytes_contents if t.datatype == "BYTES" else None
            if values is None:
                values = t.contents.int_contents
            if len(values) and draw(st.booleans()):
                del values[-draw(st.integers(1, len(values))) :]
            elif t.datatype == "BYTES":
                values.append(b"1")
            else:
                values.append(1)
    return {INVALID}


def m_missing(draw: st.DrawFn, case: Case) -> set[str]:
    name = draw(st.sampled_from([t.name for t in case.model.inputs]))
    r = case.request
    keep = [i for i, t in enumerate(r.inputs) if t.name != name]
    raws = list(r.raw_input_contents)
    tensors = [r.inputs[i] for i in keep]
    kept = [service_pb2.ModelInferRequest.InferInputTensor() for _ in tensors]
    for k, t in zip(kept, tensors, strict=True):
        k.CopyFrom(t)
    del r.inputs[:]
    r.inputs.extend(kept)
    if raws:
        del r.raw_input_contents[:]
        r.raw_input_contents.extend(raws[i] for i in keep if i < len(raws))
    return {INVALID}


def m_extra(draw: st.DrawFn, case: Case) -> set[str]:
    name = draw(st.text(min_size=0, max_size=12))
    r = case.request
    batch = r.inputs[0].shape[0] if len(r.inputs) and len(r.inputs[0].shape) else 1
    t = r.inputs.add(name=name, datatype="INT32", shape=[batch, 1])
    if len(r.raw_input_contents):
        # A mutated batch dim may be huge or negative: the contents stay small either way.
        r.raw_input_contents.append(np.zeros(max(0, min(batch, 64)), dtype="<i4").tobytes())
    else:
        t.contents.int_contents.extend([0] * max(0, min(batch, 64)))
    return {INVALID}


def m_duplicate(draw: st.DrawFn, case: Case) -> set[str]:
    r = case.request
    if len(r.inputs):
        i = draw(st.integers(0, len(r.inputs) - 1))
        copy = service_pb2.ModelInferRequest.InferInputTensor()
        copy.CopyFrom(r.inputs[i])
        r.inputs.append(copy)
        if len(r.raw_input_contents) > i:
            r.raw_input_contents.append(r.raw_input_contents[i])
    else:
        r.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
        r.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    return {INVALID}


def m_raw_and_typed(draw: st.DrawFn, case: Case) -> set[str]:
    r = case.request
    if not len(r.inputs):
        r.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    if len(r.raw_input_contents):
        t = _pick(draw, case)
        assert t is not None
        if t.datatype == "BYTES":
            t.contents.bytes_contents.append(b"1")
        else:
            t.contents.int_contents.append(1)
        return {INVALID}
    for t in r.inputs:
        r.raw_input_contents.append(b"\x00" * 4)
        if not t.HasField("contents"):
            t.contents.int_contents.append(1)
    return {INVALID}


def m_raw_count(draw: st.DrawFn, case: Case) -> set[str]:
    r = case.request
    for _ in range(draw(st.integers(1, 3))):
        r.raw_input_contents.append(draw(st.binary(max_size=8)))
    if len(r.raw_input_contents) == len(r.inputs):  # was typed: now both are set
        r.raw_input_contents.append(b"")
    return {INVALID}


def m_unknown_model(draw: st.DrawFn, case: Case) -> set[str]:
    case.request.model_name = draw(st.text(max_size=20).filter(lambda n: n not in TAKEN_NAMES))
    return {NOT_FOUND, INVALID}


def m_unknown_version(draw: st.DrawFn, case: Case) -> set[str]:
    case.request.model_version = draw(
        st.sampled_from(["0", "2", "99", "-1", "01", "1.0", " 1", "latest"])
        | st.text(min_size=1, max_size=8).filter(lambda v: v != "1")
    )
    return {NOT_FOUND, INVALID}


def m_unknown_output(draw: st.DrawFn, case: Case) -> set[str]:
    name = draw(st.text(max_size=12).filter(lambda n: n not in case.model.outputs))
    case.request.outputs.add(name=name)
    return {INVALID}


def m_duplicate_output(draw: st.DrawFn, case: Case) -> set[str]:
    name = draw(st.sampled_from(case.model.outputs))
    case.request.outputs.add(name=name)
    case.request.outputs.add(name=name)
    return {INVALID}


def m_shared_memory(draw: st.DrawFn, case: Case) -> set[str]:
    key = draw(
        st.sampled_from(["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"])
    )
    if draw(st.booleans()) or not len(case.request.inputs):
        name = case.model.outputs[0]
        # The output itself, when the case already requests it: a second entry of the same
        # name would be another fault (a duplicate output) with a code of its own.
        target = next((o for o in case.request.outputs if o.name == name), None)
        if target is None:
            target = case.request.outputs.add(name=name)
    else:
        target = _pick(draw, case)
    assert target is not None
    target.parameters[key].string_param = "region0"
    # Triton's codes: an unregistered region is NOT_FOUND, a size or offset alone INVALID.
    return {NOT_FOUND} if key == "shared_memory_region" else {INVALID}


def m_non_utf8(draw: st.DrawFn, case: Case) -> set[str]:
    """simple_string parses its BYTES as decimal integers: undecodable text is refused."""
    r = case.request
    if case.model.name != "simple_string" or not len(r.inputs):
        return m_byte_size(draw, case)
    garbage = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"12\x80", b"\xed\xa0\x80", b"\x00\xfe"]))
    i = draw(st.integers(0, len(r.inputs) - 1))
    if len(r.raw_input_contents) > i:
        items = decode_bytes(r.raw_input_contents[i])
        items[0] = garbage
        r.raw_input_contents[i] = encode_bytes(items)
    elif len(r.inputs[i].contents.bytes_contents):
        r.inputs[i].contents.bytes_contents[0] = garbage
    return {INVALID}


def m_giant(draw: st.DrawFn, case: Case) -> set[str]:
    size = draw(st.integers(SMALL_MAX_MESSAGE_BYTES + 1, 4 * SMALL_MAX_MESSAGE_BYTES))
    if draw(st.booleans()):
        case.request.id = "x" * size
    else:
        case.request.parameters["padding"].string_param = "p" * size
    return {EXHAUSTED}


MUTATIONS: dict[str, Callable[[st.DrawFn, Case], set[str]]] = {
    f.__name__.removeprefix("m_"): f
    for f in (
        m_datatype, m_rank, m_dim, m_batch, m_negative, m_huge, m_byte_size, m_missing,
        m_extra, m_duplicate, m_raw_and_typed, m_raw_count, m_unknown_model,
        m_unknown_version, m_unknown_output, m_duplicate_output, m_shared_memory, m_non_utf8,
        m_giant,
    )
}  # fmt: skip


@st.composite
def cases(draw: st.DrawFn) -> Case:
    case = draw(valid_cases())
    if draw(st.integers(0, 9)) == 0:
        return case  # one in ten stays valid
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3, unique=True))
    case.allowed = set()
    for name in names:
        case.allowed |= MUTATIONS[name](draw, case)
        case.mutations.append(name)
    return case


# -- the check ----------------------------------------------------------------------------------


def valid_simple() -> tuple[service_pb2.ModelInferRequest, list[int]]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(a.tobytes())
    return request, (a * 2).reshape(-1).tolist()


class Fuzzer:
    def __init__(self, stack: FaultStack) -> None:
        self.channel = grpc.insecure_channel(
            stack.frontend.url,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.raw_infer = self.channel.unary_unary(MODEL_METHOD)  # bytes in, bytes out
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.follow_ups = 0
        self.codes: Counter[str] = Counter()
        self.mutations: Counter[str] = Counter()

    def close(self) -> None:
        self.channel.close()

    def send(self, call: Callable[[], object]) -> tuple[str, str, object]:
        started = time.monotonic()
        try:
            response = call()
        except grpc.RpcError as err:
            code = err.code().name if err.code() is not None else "UNKNOWN"
            details = err.details() or ""
            status = LOST if code == "DEADLINE_EXCEEDED" else code
            self.calls.append(Call(started, time.monotonic() - started, status, details))
            return code, details, None
        self.calls.append(Call(started, time.monotonic() - started, OK))
        return OK, "", response

    def check(self, what: str, code: str, details: str, allowed: set[str]) -> None:
        self.codes[code] += 1
        if code not in allowed:
            self.violations.append(f"{code} ({details[:120]!r}), allowed {sorted(allowed)}: {what}")
        elif code != OK and not details.strip():
            self.violations.append(f"{code} with an empty message: {what}")

    def follow_up(self, after: str) -> None:
        """A valid request must succeed after whatever came before."""
        request, want = valid_simple()
        try:
            response = self.stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            self.violations.append(
                f"valid request failed ({err.code()}: {err.details()}) after {after}"
            )
            return
        self.follow_ups += 1
        got = response_outputs(response).get("OUTPUT0")
        if got != want:
            self.violations.append(f"valid request answered {got} after {after}")


@pytest.mark.timeout(120)
def test_bad_inputs_get_clear_errors(shared_stack: FaultStack, chaos: Chaos) -> None:
    fuzzer = Fuzzer(shared_stack)

    @settings(
        max_examples=STRUCTURED_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def structured(case: Case) -> None:
        what = case.describe()
        fuzzer.mutations.update(case.mutations or ["(valid)"])
        code, details, response = fuzzer.send(
            lambda: fuzzer.stub.ModelInfer(case.request, timeout=CALL_TIMEOUT_S)
        )
        fuzzer.check(what, code, details, case.allowed)
        if code == OK and OK in case.allowed:
            assert isinstance(response, service_pb2.ModelInferResponse)
            got, want = response_outputs(response), expected_outputs(case)
            if got != want:
                fuzzer.violations.append(f"wrong answer {got} (expected {want}): {what}")
        fuzzer.follow_up(what)

    @settings(
        max_examples=RAW_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        payload=st.binary(max_size=256)
        | st.builds(
            lambda cut, flips, valid: _corrupt(valid.SerializeToString(), cut, flips),
            st.integers(0, 400),
            st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
            st.just(valid_simple()[0]),
        )
        | st.builds(_bad_utf8_name, st.sampled_from([b"\xff", b"simple\xc3", b"\xed\xa0\x80"]))
    )
    def raw_bytes(payload: bytes) -> None:
        what = f"raw bytes {payload[:48]!r}... ({len(payload)} bytes)"
        code, details, _ = fuzzer.send(lambda: fuzzer.raw_infer(payload, timeout=CALL_TIMEOUT_S))
        # A corruption may leave a valid request (OK) or change the data; it never names a
        # model that raises.
        fuzzer.check(what, code, details, {INVALID, NOT_FOUND, OK})
        fuzzer.follow_up(what)

    started = time.monotonic()
    try:
        structured()
        raw_bytes()
    finally:
        fuzzer.close()
    elapsed = time.monotonic() - started
    rec = chaos.record(
        "7 bad-input fuzzing (hypothesis)",
        fuzzer.calls,
        notes=f"{fuzzer.follow_ups} valid follow-ups OK; {elapsed:.0f}s",
    )
    print(f"fuzz: {elapsed:.1f}s, statuses {dict(fuzzer.codes)}")
    print(f"fuzz: examples per mutation {dict(sorted(fuzzer.mutations.items()))}")
    shared_stack.assert_alive()
    assert not fuzzer.violations, (
        f"{len(fuzzer.violations)} violations in {rec.calls} calls:\n"
        + "\n".join(fuzzer.violations[:25])
    )


def _corrupt(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(1, len(data) - cut)] if cut < len(data) else data)
    for pos, mask in flips:
        if out:
            out[pos % len(out)] ^= mask
    return bytes(out)


def _bad_utf8_name(name: bytes) -> bytes:
    """A ModelInferRequest whose model_name (field 1) is not UTF-8."""
    return b"\x0a" + bytes([len(name)]) + name


ECHO_CAPACITY = 16
"""Requests the worker holds for ``echo_bytes`` (2 x max_batch_size)."""


def bytes_beyond_data(shape: list[int]) -> service_pb2.ModelInferRequest:
    """``echo_bytes`` with TEXT claiming ``shape`` elements but holding one 1-byte element."""
    request = service_pb2.ModelInferRequest(model_name="echo_bytes")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    request.inputs.add(name="TEXT", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(b"\0\0\0\0")
    request.raw_input_contents.append(encode_bytes([b"a"]))
    return request


@pytest.mark.timeout(60)
def test_bytes_shape_beyond_its_data_is_refused(shared_stack: FaultStack, chaos: Chaos) -> None:
    """A BYTES shape claiming 2**40 elements with 5 bytes of data is refused at once, and never
    costs the model a credit: more such calls than the worker holds, then a valid call.
    (Once a bug: the worker allocated the elements first, lost the request on the MemoryError,
    and 16 such calls took the model down.)"""
    channel = grpc.insecure_channel(shared_stack.frontend.url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls: list[Call] = []

    def send(request: service_pb2.ModelInferRequest, timeout_s: float) -> Call:
        started = time.monotonic()
        try:
            stub.ModelInfer(request, timeout=timeout_s)
            call = Call(started, time.monotonic() - started, OK)
        except grpc.RpcError as err:
            code = err.code().name
            status = LOST if code == "DEADLINE_EXCEEDED" else code
            call = Call(started, time.monotonic() - started, status, err.details() or "")
        calls.append(call)
        return call

    shapes = [[1, 2**40], [1, 2**62], [1, 2**45]] * (ECHO_CAPACITY // 2)
    try:
        with ThreadPoolExecutor(len(shapes)) as pool:
            answers = list(pool.map(lambda shape: send(bytes_beyond_data(shape), 2.0), shapes))
        valid = send(bytes_beyond_data([1, 1]), 5.0)
    finally:
        channel.close()
    chaos.record("7b BYTES shape beyond its data (24 calls), then a valid call", calls)
    shared_stack.assert_alive()
    statuses = Counter(c.status for c in answers)
    assert statuses == {INVALID: len(answers)}, (
        f"BYTES shapes beyond their data answered {dict(statuses)} (LOST = no answer within "
        f"the 2 s deadline): {answers[0].message!r}"
    )
    assert valid.status == OK, f"then a valid echo_bytes call: {valid.status}"
