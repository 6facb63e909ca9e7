"""A worker whose CUDA context is poisoned (a device-side assert) stops and is replaced; the
CPU stands in for the GPU: the model raises the very exception torch raises
(``torch.AcceleratorError`` with the CUDA text), which the worker cannot tell apart.

The call that hit it gets INTERNAL with the CUDA error, the worker exits 3 (so a supervisor
restarts it), and a fresh worker serves the calls that follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.faults.harness import FaultStack
from tests.integration.conftest import FAULTY_CONFIG
from tests.integration.stack import wait_for

EXIT_DEVICE_LOST = 3  # worker.server.EXIT_DEVICE_LOST (this process imports no worker module)
ASSERTING_MODEL = '''\
"""Doubles INPUT0; a negative value raises what a device-side assert raises in torch."""

import numpy as np
import torch


class Model:
    def execute(self, inputs):
        x = np.asarray(inputs["INPUT0"])
        if (x < 0).any():
            raise torch.AcceleratorError(
                "CUDA error: device-side assert triggered\\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return {"OUTPUT0": (x * 2).astype(np.int32)}
'''


def build_repo(root: Path) -> Path:
    model = root / "asserting"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(FAULTY_CONFIG.replace('"faulty"', '"asserting"'))
    (model / "1" / "model.py").write_text(ASSERTING_MODEL)
    return root


def infer(client: grpcclient.InferenceServerClient, value: int) -> np.ndarray:
    inp = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    inp.set_data_from_numpy(np.full((1, 4), value, dtype=np.int32))
    result = client.infer("asserting", [inp], client_timeout=30)
    out = result.as_numpy("OUTPUT0")
    assert out is not None
    return out


def test_a_poisoned_worker_fails_the_call_exits_3_and_the_other_serves(tmp_path: Path) -> None:
    stack = FaultStack(log_dir=tmp_path, model_repository=build_repo(tmp_path / "models"))
    try:
        stack.start_broker()
        doomed = stack.start_worker()
        stack.start_frontend()
        stack.wait_live()
        stack.wait_ready(["asserting"])
        client = stack.client()
        assert (infer(client, 2) == 4).all()
        with pytest.raises(InferenceServerException) as info:
            infer(client, -1)
        assert info.value.status() == "StatusCode.INTERNAL"
        assert "device-side assert triggered" in str(info.value.message())
        assert "the worker restarts" in str(info.value.message())
        wait_for(lambda: not doomed.alive(), timeout_s=30, what="the poisoned worker exiting")
        assert doomed.popen.returncode == EXIT_DEVICE_LOST, doomed.describe_exit()
        assert "CUDA context is unusable" in doomed.log_text()
        fresh = stack.start_worker()
        # (``stack.wait_ready`` would see the poisoned worker's exit as a failure.)
        wait_for(lambda: client.is_model_ready("asserting"), timeout_s=60,
                 what="the fresh worker serving", watch=[fresh])  # fmt: skip
        assert (infer(client, 5) == 10).all()  # a fresh worker serves (retried if need be)
    finally:
        stack.stop()
