"""Sequence batching on the worker: the config block, the per-instance sequence table on a fake
clock (START, END, idle expiry, Triton's texts), the control tensors, and the demo sequence
models run through a real batch step with those controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabric import errors
from fabric.errors import RequestError
from fabric.protocol import SEQUENCE_END, SEQUENCE_START, SEQUENCE_STRING_ID, RequestHeader
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from tests.worker.codec_helpers import make_request
from worker.batch_step import BatchStep, CancelBoard, Inbound
from worker.demo_stateful import build_stateful
from worker.loaders import load_model
from worker.repository import scan_model
from worker.sequences import SequenceTable, control_tensors, parse_sequence_batching
from worker.stats import ModelStats

from .test_runtime import FRONTEND, Replies


def request_bytes(values: np.ndarray) -> bytes:
    return make_request([("INPUT", "INT32", values)]).SerializeToString()


def output(body: bytes | None) -> int:
    assert body is not None
    response = pb.ModelInferResponse.FromString(body)
    return int(np.frombuffer(response.raw_output_contents[0], dtype="<i4")[0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def header(sequence: str, flags: int = 0, rid: int = 1, model: str = "m") -> RequestHeader:
    return RequestHeader(rid, model, "", 0, "", 0, 0, sequence, flags)


# ---- the table --------------------------------------------------------------------------------


def test_starts_go_to_the_instance_holding_fewest_and_stay_there() -> None:
    table = SequenceTable("m", 2, idle_s=1.0, clock=FakeClock())
    first = table.route(header("1", SEQUENCE_START))
    second = table.route(header("2", SEQUENCE_START))
    assert {first, second} == {0, 1}
    for _ in range(3):
        assert table.route(header("1")) == first
        assert table.route(header("2")) == second
    assert table.route(header("1", SEQUENCE_END)) == first
    assert len(table) == 1
    assert table.route(header("3", SEQUENCE_START)) == first  # it holds none now


def test_tritons_texts_for_requests_of_no_live_sequence() -> None:
    table = SequenceTable("simple_sequence", 1, idle_s=1.0, clock=FakeClock())
    with pytest.raises(RequestError) as info:
        table.route(header("77"))
    assert info.value.code == errors.INVALID_ARGUMENT
    assert info.value.message == (
        "inference request for sequence 77 to model 'simple_sequence' must specify the START "
        "flag on the first request of the sequence"
    )
    with pytest.raises(RequestError) as info:
        table.route(header(""))
    assert info.value.message == (
        "inference request to model 'simple_sequence' must specify a non-zero or non-empty "
        "correlation ID"
    )


def test_an_idle_sequence_is_released() -> None:
    clock = FakeClock()
    table = SequenceTable("m", 1, idle_s=1.0, clock=clock)
    table.route(header("1", SEQUENCE_START))
    table.route(header("2", SEQUENCE_START))
    clock.now += 0.6
    table.route(header("2"))  # used: stays
    clock.now += 0.6
    with pytest.raises(RequestError):
        table.route(header("1"))
    table.route(header("2"))
    assert len(table) == 1


def test_string_ids_are_their_own_sequences_and_restarts_keep_the_instance() -> None:
    table = SequenceTable("m", 2, idle_s=1.0, clock=FakeClock())
    at = table.route(header("5", SEQUENCE_START | SEQUENCE_STRING_ID))
    with pytest.raises(RequestError):
        table.route(header("5"))
    assert table.route(header("5", SEQUENCE_START | SEQUENCE_STRING_ID)) == at
    assert len(table) == 1
    assert table.route(header("9", SEQUENCE_START | SEQUENCE_END)) in (0, 1)
    assert len(table) == 1  # a one-request sequence holds nothing afterwards


def test_a_table_is_bounded() -> None:
    table = SequenceTable("m", 1, idle_s=1.0, clock=FakeClock(), max_per_instance=2)
    table.route(header("1", SEQUENCE_START))
    table.route(header("2", SEQUENCE_START))
    with pytest.raises(RequestError) as info:
        table.route(header("3", SEQUENCE_START))
    assert info.value.code == errors.RESOURCE_EXHAUSTED


# ---- config and controls -------------------------------------------------------------------


def _spec(root: Path, name: str):  # type: ignore[no-untyped-def]
    build_stateful(root)
    return scan_model(root / name)


def test_the_demo_configs_parse(tmp_path: Path) -> None:
    dyna = _spec(tmp_path, "simple_dyna_sequence").spec.sequence_batching
    assert dyna is not None
    assert [c.kind for c in dyna.controls] == ["START", "READY", "END", "CORRID"]
    assert dyna.strategy == "oldest"
    assert dyna.max_queue_delay_us == 10_000
    assert dyna.max_sequence_idle_us == 10_000_000
    plain = _spec(tmp_path, "simple_sequence").spec.sequence_batching
    assert plain is not None and plain.max_sequence_idle_us == 1_000_000  # Triton's default
    assert plain.strategy == "direct"


def test_control_tensors_for_a_batch(tmp_path: Path) -> None:
    sb = _spec(tmp_path, "simple_dyna_sequence").spec.sequence_batching
    assert sb is not None
    headers = [header("10", SEQUENCE_START), header("11"), header("12", SEQUENCE_END)]
    controls = control_tensors(sb, headers, batched=True)
    assert controls["START"].tolist() == [[1], [0], [0]]
    assert controls["END"].tolist() == [[0], [0], [1]]
    assert controls["READY"].tolist() == [[1], [1], [1]]
    assert controls["CORRID"].tolist() == [[10], [11], [12]]
    assert controls["CORRID"].dtype == np.uint64
    assert control_tensors(sb, headers[:1], batched=False)["START"].shape == (1,)
    with pytest.raises(RequestError, match="must be an integer"):
        control_tensors(sb, [header("abc", SEQUENCE_STRING_ID)], batched=True)


def test_a_string_corrid_control_gets_bytes() -> None:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    block = config.sequence_batching.control_input.add(name="CORRID")
    block.control.add(kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID,
                      data_type=mc.TYPE_STRING)  # fmt: skip
    sb = parse_sequence_batching(config, ValueError)
    assert sb is not None
    tensor = control_tensors(sb, [header("abc", SEQUENCE_STRING_ID)], batched=True)["CORRID"]
    assert tensor.tolist() == [[b"abc"]]


# ---- the demo models through a batch step ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    # OUTPUT = READY * (INPUT + START [+ END * CORRID]) for requests (7, START), (5), (3, END)
    [("simple_sequence", [8, 5, 3]), ("simple_dyna_sequence", [8, 5, 3 + 1000])],
)
def test_demo_sequence_models_follow_tritons_contract(
    tmp_path: Path, name: str, expected: list[int]
) -> None:
    model = load_model(_spec(tmp_path, name), 1, "cpu")
    replies = Replies()
    step = BatchStep(model, "s-0", replies, ModelStats(), CancelBoard())
    for rid, (value, flags) in enumerate([(7, SEQUENCE_START), (5, 0), (3, SEQUENCE_END)], start=1):
        payload = request_bytes(np.array([[value]], dtype=np.int32))
        step.take(Inbound(header("1000", flags, rid, name), FRONTEND, payload, 0.0))
    batch, _ = step.next_batch(lambda: None)
    step.run(batch)
    got = replies.wait_for(3)
    assert [r.status for r in got] == [errors.OK] * 3
    assert [output(r.body) for r in got] == expected


def test_a_sequence_request_must_be_one_row(tmp_path: Path) -> None:
    model = load_model(_spec(tmp_path, "simple_sequence"), 1, "cpu")
    replies = Replies()
    step = BatchStep(model, "s-0", replies, ModelStats(), CancelBoard())
    payload = request_bytes(np.array([[1], [2]], dtype=np.int32))
    step.take(Inbound(header("1", SEQUENCE_START, 1, "simple_sequence"), FRONTEND, payload, 0.0))
    (reply,) = replies.wait_for(1)
    assert reply.status == errors.INVALID_ARGUMENT
    assert reply.message == (
        "inference request to model 'simple_sequence' must specify batch-size 1 due to "
        "requirements of sequence batcher"
    )
