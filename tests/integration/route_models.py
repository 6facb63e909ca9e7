"""A model repository for canary releases: a stable model and canaries that misbehave on purpose.

Every model has the same contract, so that one request fits every target of a route:
INPUT0 INT32 [4] → OUTPUT0 = 2·INPUT0, no batching (``max_batch_size: 0``: each call runs
alone, so a failing call fails only itself).

* ``clf``: the stable model, ~2 ms per call.
* ``clf_ok``: a healthy canary, the same as ``clf``.
* ``clf_fail``: fails every call whose INPUT0[0] is 1 modulo 5 (20 % of calls numbered in
  turn; the worker's warm-up call, all zeros, passes) with a model error (INTERNAL); otherwise
  like ``clf``.
* ``clf_slow``: answers correctly after 200 ms, four instances (so that it queues little).
"""

from __future__ import annotations

from pathlib import Path

STABLE = "clf"
HEALTHY = "clf_ok"
FAILING = "clf_fail"
SLOW = "clf_slow"
ROUTE_MODELS = (STABLE, HEALTHY, FAILING, SLOW)
DIM = 4
FAIL_EVERY = 5
SLOW_S = 0.200
FAST_S = 0.002

_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] }} ]
instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]
"""

_MODEL = '''\
"""OUTPUT0 = 2 * INPUT0 after {delay_s} s; fails when fail_every > 0 and INPUT0[0] is 1
modulo it ({fail_every})."""

import time

import numpy as np


class Model:
    def load(self, config, device):
        self.device = device

    def execute(self, inputs):
        x = np.asarray(inputs["INPUT0"])
        time.sleep({delay_s})
        if {fail_every} and int(x.reshape(-1)[0]) % {fail_every} == 1:
            raise RuntimeError("canary fault: INPUT0[0] = %d" % int(x.reshape(-1)[0]))
        return {{"OUTPUT0": (x * 2).astype(np.int32)}}
'''


def _write(repo: Path, name: str, *, delay_s: float, fail_every: int, instances: int) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(_CONFIG.format(name=name, instances=instances))
    source = _MODEL.format(delay_s=delay_s, fail_every=fail_every)
    (repo / name / "1" / "model.py").write_text(source)


def build_route_repo(repo: Path) -> Path:
    """Write the four models under ``repo`` (created); returns it."""
    repo.mkdir(parents=True, exist_ok=True)
    _write(repo, STABLE, delay_s=FAST_S, fail_every=0, instances=2)
    _write(repo, HEALTHY, delay_s=FAST_S, fail_every=0, instances=2)
    _write(repo, FAILING, delay_s=FAST_S, fail_every=FAIL_EVERY, instances=2)
    _write(repo, SLOW, delay_s=SLOW_S, fail_every=0, instances=4)
    return repo
