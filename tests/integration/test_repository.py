"""Repository control: explicit unload/load through the RPCs, and hot reload by polling (a new
version takes over traffic without any request failing)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.helpers import (
    assert_mlp_output,
    check_simple,
    mlp_expected,
    mlp_input,
    rand_fp32,
)
from tests.integration.stack import DEMO_MODELS, Stack, wait_for

ADDER_CONFIG = """\
name: "adder"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]
"""

ADDER_MODEL = """\
import numpy as np


class Model:
    def load(self, config, device):
        pass

    def execute(self, inputs):
        return {{"OUTPUT0": (inputs["INPUT0"] + {increment}).astype(np.int32)}}
"""


def write_adder_version(repo: Path, version: int) -> None:
    """Write ``adder/<version>`` atomically (rename) so a poll never sees half a version."""
    model_dir = repo / "adder"
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "config.pbtxt").exists():
        (model_dir / "config.pbtxt").write_text(ADDER_CONFIG)
    staging = repo.parent / f".adder-{version}"
    staging.mkdir()
    (staging / "model.py").write_text(ADDER_MODEL.format(increment=version))
    os.rename(staging, model_dir / str(version))


def adder_input(values: np.ndarray) -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("INPUT0", list(values.shape), "INT32")
    x.set_data_from_numpy(values)
    return [x]


@pytest.mark.timeout(120)
def test_unload_then_load(make_stack: Callable[[], Stack], model_repo: Path) -> None:
    stack = make_stack()
    stack.start_broker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(DEMO_MODELS)
    client = stack.client()
    x = rand_fp32(np.random.default_rng(9), 2)

    client.unload_model("mlp")
    wait_for(
        lambda: not client.is_model_ready("mlp", client_timeout=1.0),
        timeout_s=10.0,
        what="ModelReady(mlp) false after unload",
        watch=stack.procs,
    )
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert "mlp" not in index or index["mlp"].state != "READY", index.get("mlp")
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", mlp_input(x), client_timeout=20)
    assert info.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"), info.value
    check_simple(client)  # the other models are untouched

    client.load_model("mlp")
    stack.wait_ready(["mlp"], timeout_s=30.0)
    assert_mlp_output(client.infer("mlp", mlp_input(x)), mlp_expected(model_repo, x))


@pytest.mark.timeout(120)
def test_poll_new_version_takes_over_without_errors(
    make_stack: Callable[[], Stack], demo_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(demo_repo / "simple", repo / "simple")
    write_adder_version(repo, 1)

    stack = make_stack()
    stack.start_broker()
    stack.start_worker(repo, extra_args=["--poll-interval-s", "0.3"])
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["simple", "adder"])
    client = stack.client()
    values = np.array([[1, 2, 3, 4]], dtype=np.int32)

    first = client.infer("adder", adder_input(values))
    assert first.get_response().model_version == "1"
    np.testing.assert_array_equal(first.as_numpy("OUTPUT0"), values + 1)

    # Keep traffic flowing while version 2 appears: every request must succeed, answered by
    # version 1 or version 2, never a mix within one response and never an error.
    stop = threading.Event()
    problems: list[str] = []
    served: dict[str, int] = {"1": 0, "2": 0}

    def traffic() -> None:
        own = grpcclient.InferenceServerClient(stack.frontend.url)
        try:
            while not stop.is_set():
                try:
                    result = own.infer("adder", adder_input(values), client_timeout=20)
                except InferenceServerException as exc:
                    problems.append(f"{exc.status()}: {exc.message()}")
                    continue
                version = result.get_response().model_version
                out = result.as_numpy("OUTPUT0")
                if version not in served or not np.array_equal(out, values + int(version)):
                    problems.append(f"version {version!r} answered {out}")
                else:
                    served[version] += 1
        finally:
            own.close()

    thread = threading.Thread(target=traffic, name="adder-traffic")
    thread.start()
    try:
        write_adder_version(repo, 2)
        wait_for(
            lambda: served["2"] >= 20,
            timeout_s=20.0,
            what="version 2 of adder serving traffic after it was added",
            watch=stack.procs,
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not problems, problems[:10]
    assert served["1"] > 0

    latest = client.infer("adder", adder_input(values))
    assert latest.get_response().model_version == "2"
    np.testing.assert_array_equal(latest.as_numpy("OUTPUT0"), values + 2)
    assert client.is_model_ready("adder", model_version="2")
    assert not client.is_model_ready("adder", model_version="1"), "latest 1 unloads version 1"
    # ModelMetadata lists the versions that are available, and version 1 no longer is.
    wait_for(
        lambda: list(client.get_model_metadata("adder").versions) == ["2"],
        timeout_s=5.0,
        what="ModelMetadata(adder).versions == ['2'] after version 1 was unloaded",
        watch=stack.procs,
    )
