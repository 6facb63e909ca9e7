"""Opt-in padding: requests of different lengths share a batch and each gets its own answer."""

from __future__ import annotations

import queue
import textwrap
from pathlib import Path

import numpy as np

from fabric import errors
from worker.loaders import load_model
from worker.repository import scan_model
from worker.runtime import ModelInstance
from worker.stats import ModelStats

from .test_runtime import Replies, decode_response, inbound, request_bytes

CONFIG = """
name: "seq"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""
PAD = """
parameters { key: "pad_to_longest" value { string_value: "true" } }
"""
MODEL = """
import numpy as np

SHAPES = []


class Model:
    def load(self, config, device):
        pass

    def execute(self, inputs):
        x = inputs["X"]
        SHAPES.append(x.shape)
        return {"DOUBLED": x * 2, "TOTAL": x.sum(axis=1, keepdims=True)}
"""


def run(tmp_path: Path, config: str, lengths: list[int]) -> tuple[list, list[tuple[int, ...]]]:
    model_dir = tmp_path / "seq"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    model = load_model(scan_model(model_dir), 1, "cpu")
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    replies = Replies()
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, n), dtype=np.float32) + 1 for n in lengths]
    for rid, x in enumerate(inputs):  # all queued before the instance starts: one batch
        inbox.put(inbound(rid, request_bytes({"X": x})))
    instance = ModelInstance(model, 0, replies, ModelStats(), inbox)
    instance.start()
    got = replies.wait_for(len(lengths))
    instance.stop()
    instance.join(5)
    shapes = list(model._instance.execute.__globals__["SHAPES"])  # type: ignore[attr-defined]
    return [(r, inputs[r.request_id]) for r in got], shapes


def test_padding_batches_different_lengths_and_trims_each_answer(tmp_path: Path) -> None:
    results, shapes = run(tmp_path, CONFIG + PAD, [3, 5, 2, 5])
    assert shapes == [(4, 5)]  # one batch, padded to the longest
    for reply, x in results:
        assert reply.status == errors.OK
        out = decode_response(reply.body)
        np.testing.assert_allclose(out["DOUBLED"], x * 2)  # own length, not the padded one
        np.testing.assert_allclose(out["TOTAL"], x.sum(axis=1, keepdims=True), rtol=1e-6)


def test_without_the_opt_in_lengths_never_mix(tmp_path: Path) -> None:
    results, shapes = run(tmp_path, CONFIG, [3, 5, 2, 5])
    assert sorted(shapes) == [(1, 2), (1, 3), (2, 5)]
    for reply, x in results:
        np.testing.assert_allclose(decode_response(reply.body)["DOUBLED"], x * 2)
