"""Model repositories for the fault scenarios: small ``model.py`` models that misbehave on purpose.

* ``work``: INPUT0 INT32 [16] → OUTPUT0 = 2·INPUT0 + 1, PID = the worker's pid (who served it);
  ~3 ms per batch (a sleep, so that it costs no CPU), max_batch_size 8, dynamic batching.
* ``busy``: the same contract with 20 ms per batch (the overload scenario's bottleneck).
* ``slow_deadline``: TAG, DELAY_MS INT32 [1] → TAG_OUT; sleeps DELAY_MS, max_batch_size 1.
  Every execution appends "<tag> <wall-clock ns at start>" to ``executions.log`` in its model
  directory, so a test sees exactly which requests ran, and when.
* ``slow_cancel``: the same, with max_batch_size 8 and dynamic batching.
* ``faulty``: INPUT0 INT32 [4] → OUTPUT0 = 2·INPUT0; raises on any negative value.
* ``varlen``: INPUT0 INT32 [-1] and TEXT BYTES [-1], echoed as OUTPUT0 and TEXT_OUT;
  ``echo_bytes`` is the same model under another name (for a test that may break it).
* ``hedged``: the ``work`` contract with ``hedge_after_ms: "50"``; in a repository built with
  ``stall_every_s`` it sleeps ``stall_s`` about once per ``stall_every_s`` seconds.
* ``unhedged``: the same stalling model without hedging (the control group).
Plus ``simple`` (TorchScript) and ``simple_string`` from ``python -m worker.demo_models``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import FAULTY_CONFIG, FAULTY_MODEL

EXECUTIONS_LOG = "executions.log"
WORK_DIM = 16
WORK_COMPUTE_S = 0.003
BUSY_COMPUTE_S = 0.020
HEDGE_AFTER_MS = 50

_WORK_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
dynamic_batching {{ }}
input [
  {{
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }}
]
output [
  {{
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }},
  {{
    name: "PID"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }}
]
{extra}"""

_WORK_MODEL = '''\
"""OUTPUT0 = 2 * INPUT0 + 1 and the serving process's pid, after {compute_s} s per batch.
Stalls {stall_s} s at most once per {stall_every_s} s when stall_every_s > 0."""

import os
import time

import numpy as np

COMPUTE_S = {compute_s}
STALL_S = {stall_s}
STALL_EVERY_S = {stall_every_s}


class Model:
    def load(self, config, device):
        self.pid = os.getpid()
        self.next_stall = time.monotonic() + STALL_EVERY_S

    def execute(self, inputs):
        x = np.asarray(inputs["INPUT0"])
        if STALL_EVERY_S > 0 and time.monotonic() >= self.next_stall:
            time.sleep(STALL_S)
            self.next_stall = time.monotonic() + STALL_EVERY_S
        time.sleep(COMPUTE_S)
        pid = np.full((x.shape[0], 1), self.pid, dtype=np.int32)
        return {{"OUTPUT0": (x * 2 + 1).astype(np.int32), "PID": pid}}
'''

_SLOW_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
{batching}input [
  {{
    name: "TAG"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }},
  {{
    name: "DELAY_MS"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "TAG_OUT"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }}
]
"""

_SLOW_MODEL = '''\
"""Logs the tags of each batch with its start time, sleeps the largest DELAY_MS, echoes TAG."""

import os
import time

import numpy as np

LOG = {log!r}


class Model:
    def load(self, config, device):
        self.device = device

    def execute(self, inputs):
        started = time.time_ns()
        tags = np.asarray(inputs["TAG"]).reshape(-1)
        line = "".join(f"{{int(t)}} {{started}}\\n" for t in tags)
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        time.sleep(float(np.asarray(inputs["DELAY_MS"]).max()) / 1000.0)
        return {{"TAG_OUT": np.asarray(inputs["TAG"]).astype(np.int32)}}
'''

_VARLEN_CONFIG = """\
name: "varlen"
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ -1 ]
  },
  {
    name: "TEXT"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ -1 ]
  },
  {
    name: "TEXT_OUT"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
"""

_VARLEN_MODEL = '''\
"""Echoes its variable-length inputs."""

import numpy as np


class Model:
    def load(self, config, device):
        self.device = device

    def execute(self, inputs):
        return {"OUTPUT0": np.asarray(inputs["INPUT0"]), "TEXT_OUT": inputs["TEXT"]}
'''

_HEDGE_PARAMETER = (
    f'parameters {{ key: "hedge_after_ms" value {{ string_value: "{HEDGE_AFTER_MS}" }} }}\n'
)


def _write(repo: Path, name: str, config: str, source: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / "model.py").write_text(source)
    return model_dir


def write_work(
    repo: Path,
    name: str = "work",
    compute_s: float = WORK_COMPUTE_S,
    extra: str = "",
    stall_s: float = 0.0,
    stall_every_s: float = 0.0,
) -> Path:
    return _write(
        repo,
        name,
        _WORK_CONFIG.format(name=name, extra=extra),
        _WORK_MODEL.format(compute_s=compute_s, stall_s=stall_s, stall_every_s=stall_every_s),
    )


def write_slow(repo: Path, name: str, max_batch_size: int) -> Path:
    batching = "dynamic_batching { }\n" if max_batch_size > 1 else ""
    model_dir = repo / name
    return _write(
        repo,
        name,
        _SLOW_CONFIG.format(name=name, max_batch_size=max_batch_size, batching=batching),
        _SLOW_MODEL.format(log=str(model_dir / EXECUTIONS_LOG)),
    )


def build_fault_repo(repo: Path, demo_repo: Path) -> Path:
    """The repository of the scenarios' stacks (all models but the hedging pair)."""
    repo.mkdir(parents=True, exist_ok=True)
    for demo in ("simple", "simple_string"):
        shutil.copytree(demo_repo / demo, repo / demo)
    write_work(repo, "work")
    write_work(repo, "busy", compute_s=BUSY_COMPUTE_S)
    write_slow(repo, "slow_deadline", max_batch_size=1)
    write_slow(repo, "slow_cancel", max_batch_size=8)
    _write(repo, "faulty", FAULTY_CONFIG, FAULTY_MODEL)  # the integration suite's
    _write(repo, "varlen", _VARLEN_CONFIG, _VARLEN_MODEL)
    echo = _VARLEN_CONFIG.replace('name: "varlen"', 'name: "echo_bytes"')
    _write(repo, "echo_bytes", echo, _VARLEN_MODEL)
    return repo


def build_hedge_repo(
    repo: Path, stall_s: float, stall_every_s: float, compute_s: float = WORK_COMPUTE_S
) -> Path:
    """``hedged`` and ``unhedged``, stalling when ``stall_every_s`` > 0 (the slow worker)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name, extra in (("hedged", _HEDGE_PARAMETER), ("unhedged", "")):
        write_work(repo, name, compute_s, extra, stall_s=stall_s, stall_every_s=stall_every_s)
    return repo


def executions(model_dir: Path) -> list[tuple[int, int]]:
    """(tag, start wall-clock ns) of every row the model executed, warm-up (tag 0) excluded."""
    path = model_dir / EXECUTIONS_LOG
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tag, started = line.split()
        if int(tag) != 0:
            out.append((int(tag), int(started)))
    return out
