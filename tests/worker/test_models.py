"""``ModelTable`` on a repository in tmp_path: loading, version policies, hot swaps, unloads that
wait for requests in flight, polling, broken models and statistics. Requests go in the way the
worker's I/O thread sends them (``enter`` then the version's queue) and replies come back
through the ``send_reply`` callback.
"""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fabric import errors
from fabric.errors import RequestError
from protos import grpc_service_pb2 as pb
from worker.models import ModelTable
from worker.runtime import Cancel
from worker.stats import ModelStats

from .test_runtime import (
    FRONTEND,
    MLP_CONFIG,
    WAIT_S,
    Probe,
    Replies,
    batching,
    inbound,
    mlp_rows,
    model_module,
    ragged_rows,
    request_bytes,
    thread_alive,
    wait_until,
    write_model,
)


class Table:
    """A ``ModelTable`` with its replies, and requests sent as the I/O thread sends them."""

    def __init__(self, root: Path, drain_timeout_s: float = WAIT_S) -> None:
        self.replies = Replies()
        self.table = ModelTable(
            root, "cpu", self.replies, min_credit=4, drain_timeout_s=drain_timeout_s
        )
        self._next_id = 0

    def submit(self, model: str, inputs: dict[str, np.ndarray], version: str = "") -> int:
        version = version or self.table.latest[model]
        served = self.table.served[(model, version)]
        self._next_id += 1
        served.enter()
        served.inbox.put(inbound(self._next_id, request_bytes(inputs), model=model))
        return self._next_id

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], version: str = ""
    ) -> pb.ModelInferResponse:
        """Send one request and wait for its reply; returns the decoded response."""
        rid = self.submit(model, inputs, version)
        wait_until(lambda: rid in self.replies.by_id())
        reply = self.replies.by_id()[rid]
        assert reply.status == errors.OK, reply.message
        assert reply.body is not None
        return pb.ModelInferResponse.FromString(reply.body)

    def served(self) -> list[tuple[str, str]]:
        return sorted(self.table.served)

    def probe(self, model: str, version: str) -> Probe:
        return Probe(self.table.served[(model, version)].model)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def tables() -> Iterator[list[Table]]:
    made: list[Table] = []
    yield made
    for t in made:
        t.table.stop_all()


def table_for(repo: Path, tables: list[Table], drain_timeout_s: float = WAIT_S) -> Table:
    t = Table(repo, drain_timeout_s)
    tables.append(t)
    return t


def ragged_x(rows: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    return {"X": ragged_rows(rows, 2, seed)}


# ---- load_all ---------------------------------------------------------------------------------


def test_load_all_serves_the_good_models_and_reports_the_broken_ones(
    repo: Path, tables: list[Table]
) -> None:
    write_model(repo, "mlp", "mlp", batching())
    write_model(repo, "ragged", "ragged")
    broken = write_model(repo, "broken", "mlp")
    (broken / "1" / "model.pt").write_bytes(b"not a zip archive")
    (repo / "bad_config").mkdir()
    (repo / "bad_config" / "config.pbtxt").write_text("max_batch_size: [")
    (repo / "not_a_model").mkdir()
    t = table_for(repo, tables)

    t.table.load_all()

    assert t.served() == [("mlp", "1"), ("ragged", "1")]
    assert t.table.latest == {"mlp": "1", "ragged": "1"}
    assert t.table.load_errors["broken:1"].startswith("model.pt: ")
    assert "cannot parse" in t.table.load_errors["bad_config"]
    assert [(a.name, a.version) for a in t.table.announcements()] == [("mlp", "1"), ("ragged", "1")]
    response = t.infer("mlp", {"X": mlp_rows(3, 0)})
    assert (response.model_name, response.model_version) == ("mlp", "1")
    assert list(response.outputs[0].shape) == [3, 3]
    assert t.infer("ragged", ragged_x()).model_name == "ragged"


def test_load_all_needs_a_repository(tmp_path: Path, tables: list[Table]) -> None:
    with pytest.raises(FileNotFoundError):
        table_for(tmp_path / "absent", tables).table.load_all()


# ---- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", ["3"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("version_policy: { specific: { versions: [1, 3] } }", ["1", "3"]),
    ],
)
def test_version_policy_picks_the_versions_served(
    repo: Path, tables: list[Table], policy: str, served: list[str]
) -> None:
    for version in (1, 2, 3):
        write_model(repo, "m", "mlp", policy, version=version)
    t = table_for(repo, tables)

    assert t.table.load("m") == served

    assert t.served() == [("m", v) for v in served]
    assert t.table.latest == {"m": served[-1]}
    x = {"X": mlp_rows(2, 7)}
    outputs = {}
    for v in served:
        response = t.infer("m", x, version=v)
        assert response.model_version == v
        outputs[v] = response.raw_output_contents[0]
    assert len(set(outputs.values())) == len(served)  # really different weights per version


def test_load_of_one_version_and_of_an_absent_one(repo: Path, tables: list[Table]) -> None:
    for version in (1, 2):
        write_model(repo, "m", "ragged", version=version)
    t = table_for(repo, tables)
    assert t.table.load("m", "1") == ["1"]  # explicitly named: served besides the policy
    assert t.table.load("m") == ["2"]
    with pytest.raises(RequestError) as info:
        t.table.load("m", "7")
    assert info.value.code == errors.NOT_FOUND
    for name in ("nope", "../m", ".hidden"):
        with pytest.raises(RequestError) as info:
            t.table.load(name)
        assert info.value.code == errors.NOT_FOUND


def test_new_version_is_ready_before_traffic_moves_and_old_requests_finish(
    repo: Path, tables: list[Table]
) -> None:
    write_model(repo, "m", "ragged", batching())
    t = table_for(repo, tables)
    t.table.load_all()
    old = t.table.served[("m", "1")]
    probe = t.probe("m", "1")
    probe.close_gate()
    in_flight = t.submit("m", ragged_x())
    assert probe.wait_entered()

    write_model(repo, "m", "ragged", batching(), version=2)
    result: list[list[str]] = []
    loader = threading.Thread(target=lambda: result.append(t.table.load("m")), name="loader")
    loader.start()
    try:
        # v2 takes new traffic while v1 still holds a request; the swap waits for it. v2 is
        # served (and latest) first, then v1 leaves ``served``: wait for both steps.
        wait_until(lambda: t.table.latest.get("m") == "2" and ("m", "1") not in t.table.served)
        assert t.infer("m", ragged_x(2, 1)).model_version == "2"
        loader.join(0.05)
        assert loader.is_alive()
        assert old.pending == 1
    finally:
        probe.open_gate()
        loader.join(WAIT_S)
    assert result == [["2"]]
    reply = t.replies.by_id()[in_flight]
    assert reply.status == errors.OK
    assert pb.ModelInferResponse.FromString(reply.body or b"").model_version == "1"
    assert old.pending == 0
    assert not any(thread_alive(inst.name) for inst in old.instances)


def test_unload_waits_for_requests_in_flight_then_stops_the_instances(
    repo: Path, tables: list[Table]
) -> None:
    write_model(repo, "m", "ragged", batching() + "instance_group [ { count: 2 } ]")
    t = table_for(repo, tables)
    t.table.load_all()
    served = t.table.served[("m", "1")]
    assert len(served.instances) == 2
    probe = t.probe("m", "1")  # instance 0's copy of the model
    probe.close_gate()
    rid = 0
    while not probe.calls:  # keep sending until one reaches the copy we hold
        rid = t.submit("m", ragged_x(seed=rid))
        probe.wait_entered(0.05)
    held = rid
    unloader = threading.Thread(target=t.table.unload, args=("m",), name="unloader")
    unloader.start()
    try:
        wait_until(lambda: not t.table.served)
        unloader.join(0.05)
        assert unloader.is_alive(), "unload did not wait for the request in flight"
    finally:
        probe.open_gate()
        unloader.join(WAIT_S)
    assert not unloader.is_alive()
    assert t.replies.by_id()[held].status == errors.OK
    assert len(t.replies) == held
    assert served.pending == 0
    assert not any(thread_alive(inst.name) for inst in served.instances)
    with pytest.raises(RequestError) as info:
        t.table.unload("m")
    assert info.value.code == errors.NOT_FOUND
    assert t.table.latest == {}


def test_unload_of_an_idle_model_with_two_instances_is_prompt(
    repo: Path, tables: list[Table]
) -> None:
    write_model(repo, "m", "ragged", "instance_group [ { count: 2 } ]")
    t = table_for(repo, tables)
    t.table.load("m")
    served = t.table.served[("m", "1")]
    started = time.monotonic()
    t.table.unload("m", "1")
    assert time.monotonic() - started < 2.0
    assert not any(thread_alive(inst.name) for inst in served.instances)


def test_cancelled_request_leaves_nothing_pending(repo: Path, tables: list[Table]) -> None:
    write_model(repo, "m", "ragged", batching())
    t = table_for(repo, tables)
    t.table.load_all()
    served = t.table.served[("m", "1")]
    probe = t.probe("m", "1")
    probe.close_gate()
    t.submit("m", ragged_x())
    assert probe.wait_entered()
    cancelled = t.submit("m", ragged_x(seed=1))
    served.inbox.put(Cancel(FRONTEND, cancelled))
    probe.open_gate()
    wait_until(lambda: served.stats.cancelled == 1)
    wait_until(lambda: t.table.pending() == 0, timeout_s=1.0)


# ---- poll ---------------------------------------------------------------------------------------


def test_poll_follows_versions_and_models_on_disk(repo: Path, tables: list[Table]) -> None:
    policy = "version_policy: { latest: { num_versions: 2 } }"
    write_model(repo, "m", "ragged", policy)
    t = table_for(repo, tables)
    t.table.load_all()
    assert t.served() == [("m", "1")]
    assert t.table.poll() is False

    write_model(repo, "m", "ragged", policy, version=2)
    write_model(repo, "n", "mlp")
    assert t.table.poll() is True
    assert t.served() == [("m", "1"), ("m", "2"), ("n", "1")]

    write_model(repo, "m", "ragged", policy, version=3)
    assert t.table.poll() is True
    assert t.served() == [("m", "2"), ("m", "3"), ("n", "1")]

    shutil.rmtree(repo / "m" / "3")  # the latest two are 1 and 2 again
    shutil.rmtree(repo / "n")
    assert t.table.poll() is True
    assert t.served() == [("m", "1"), ("m", "2")]
    assert t.table.latest == {"m": "2"}
    assert t.infer("m", ragged_x()).model_version == "2"


def test_broken_model_fails_with_a_clear_error_while_others_keep_serving(
    repo: Path, tables: list[Table]
) -> None:
    write_model(repo, "good", "ragged")
    t = table_for(repo, tables)
    t.table.load_all()
    bad = repo / "bad"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text(MLP_CONFIG)
    (bad / "1" / "model.py").write_text("def broken(:\n")

    assert t.table.poll() is False
    with pytest.raises(RequestError) as info:
        t.table.load("bad")
    assert info.value.code == errors.INVALID_ARGUMENT
    assert info.value.message.startswith(
        "load failed for model 'bad': version 1 is at UNAVAILABLE state: model.py: SyntaxError"
    )
    assert "SyntaxError" in t.table.load_errors["bad:1"]
    assert t.served() == [("good", "1")]
    assert t.infer("good", ragged_x()).model_name == "good"


def test_broken_new_version_keeps_the_old_one_serving(repo: Path, tables: list[Table]) -> None:
    write_model(repo, "m", "ragged")
    t = table_for(repo, tables)
    t.table.load_all()
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.py").write_text("def broken(:\n")
    with pytest.raises(RequestError):
        t.table.load("m")
    assert t.served() == [("m", "1")]


def test_load_picks_up_a_changed_config(repo: Path, tables: list[Table]) -> None:
    write_model(repo, "m", "ragged")
    t = table_for(repo, tables)
    t.table.load_all()
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    t.table.load("m")
    assert t.table.served[("m", "1")].model.spec.max_batch_size == 4


# ---- warm-up and partial loads ------------------------------------------------------------------


def test_a_model_refusing_our_zero_warm_up_is_still_served(repo: Path, tables: list[Table]) -> None:
    """Zeros are our choice, not the operator's: a model that fails on them loads, and its
    requests answer for themselves."""
    path = write_model(repo, "m", "mlp")
    config = path / "config.pbtxt"  # the config says 5 features, the model takes 4
    config.write_text(config.read_text().replace("dims: [ 4 ]", "dims: [ 5 ]"))
    t = table_for(repo, tables)
    t.table.load("m")
    assert t.served() == [("m", "1")]
    assert "m:1" not in t.table.load_errors


WARMUP_SAMPLE = """
model_warmup [ {{
  name: "{name}" batch_size: {batch} count: 2
  inputs {{ key: "X" value: {{ data_type: TYPE_INT64 dims: [ 3 ] {data} }} }}
}} ]
"""


@pytest.mark.parametrize("data", ["zero_data: true", "random_data: true"])
def test_config_warm_up_runs_count_times_before_serving(
    repo: Path, tables: list[Table], data: str
) -> None:
    write_model(repo, "m", "ragged", WARMUP_SAMPLE.format(name="w", batch=2, data=data))
    t = table_for(repo, tables)
    t.table.load("m")
    calls = model_module(t.table.served[("m", "1")].model).CALLS
    assert [shape for _, shape in calls] == [(2, 3), (2, 3)]


def test_config_warm_up_reads_its_input_file(repo: Path, tables: list[Table]) -> None:
    path = write_model(
        repo, "m", "ragged", WARMUP_SAMPLE.format(name="f", batch=1, data='input_data_file: "x"')
    )
    (path / "warmup").mkdir()
    (path / "warmup" / "x").write_bytes(np.arange(3, dtype=np.int64).tobytes())
    t = table_for(repo, tables)
    t.table.load("m")
    assert t.served() == [("m", "1")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('input_data_file: "../config.pbtxt"', "must be a file name in warmup/"),
        ('input_data_file: "absent"', "cannot read warmup/absent"),
        ("zero_data: true", "warm-up sample 'w' failed: model 'm' failed: no zeros here"),
    ],
)
def test_config_warm_up_failure_fails_the_load(
    repo: Path, tables: list[Table], data: str, message: str
) -> None:
    write_model(repo, "m", "ragged", WARMUP_SAMPLE.format(name="w", batch=1, data=data))
    (repo / "m" / "1" / "model.py").write_text(
        "class Model:\n    def execute(self, inputs):\n        raise ValueError('no zeros here')\n"
    )
    t = table_for(repo, tables)
    with pytest.raises(RequestError) as info:
        t.table.load("m")
    assert info.value.code == errors.INVALID_ARGUMENT
    assert message in info.value.message
    assert "m:1" in t.table.load_errors
    assert t.served() == []


FINALIZE_MODEL = """
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


class Model:
    def load(self, config, device):
        loads = HERE / "loads"
        n = int(loads.read_text()) if loads.exists() else 0
        loads.write_text(str(n + 1))
        if n == {fail_at}:
            raise MemoryError("instance does not fit")

    def execute(self, inputs):
        x = inputs["X"]
        return {{"Y": x, "S": x.sum(axis=1, keepdims=True)}}

    def finalize(self):
        finalized = HERE / "finalized"
        finalized.write_text(str(int(finalized.read_text()) + 1 if finalized.exists() else 1))
"""


def write_finalize_model(repo: Path, fail_at: int) -> Path:
    path = write_model(repo, "m", "ragged", "instance_group [ { count: 2 } ]")
    (path / "1" / "model.py").write_text(textwrap.dedent(FINALIZE_MODEL.format(fail_at=fail_at)))
    return path / "1"


def test_unload_finalizes_every_instance(repo: Path, tables: list[Table]) -> None:
    version_dir = write_finalize_model(repo, fail_at=-1)
    t = table_for(repo, tables)
    t.table.load("m")
    t.table.unload("m")
    assert (version_dir / "finalized").read_text() == "2"


def test_failed_second_instance_releases_the_first(repo: Path, tables: list[Table]) -> None:
    version_dir = write_finalize_model(repo, fail_at=1)
    t = table_for(repo, tables)
    with pytest.raises(RequestError) as info:
        t.table.load("m")
    assert "MemoryError: instance does not fit" in info.value.message
    assert (version_dir / "finalized").exists()


# ---- statistics ---------------------------------------------------------------------------------


def test_statistics_count_requests_and_batches_per_version(repo: Path, tables: list[Table]) -> None:
    write_model(repo, "mlp", "mlp", batching())
    write_model(repo, "ragged", "ragged", batching())
    t = table_for(repo, tables)
    t.table.load_all()
    for rows in (1, 3, 2):
        t.infer("mlp", {"X": mlp_rows(rows, rows)})
    t.infer("ragged", ragged_x(2))
    mlp_stats = t.table.served[("mlp", "1")].stats
    ragged_stats = t.table.served[("ragged", "1")].stats
    # Statistics are recorded just after the replies go out.
    wait_until(lambda: mlp_stats.execution_count == 3 and ragged_stats.execution_count == 1)

    everything = t.table.statistics("", "")
    assert [(s.name, s.version) for s in everything.model_stats] == [
        ("mlp", "1"),
        ("ragged", "1"),
    ]
    (mlp,) = t.table.statistics("mlp", "").model_stats
    assert mlp.inference_count == 6
    assert mlp.execution_count == 3
    assert mlp.last_inference > 0
    inference = mlp.inference_stats
    assert inference.success.count == 3
    assert inference.fail.count == 0
    for duration in (inference.success, inference.queue, inference.compute_infer):
        assert duration.count == 3
    assert inference.compute_infer.ns > 0
    assert inference.success.ns >= inference.compute_infer.ns
    assert [(b.batch_size, b.compute_infer.count) for b in mlp.batch_stats] == [
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    assert t.table.statistics("mlp", "2").model_stats == []
    assert t.table.statistics("absent", "").model_stats == []
    assert isinstance(mlp_stats, ModelStats)
    assert mlp_stats.mean_batch_rows() == 2.0
