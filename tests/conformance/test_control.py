"""Model control as Triton's: modes, restricted protocols, unload -> NOT_FOUND, RepositoryIndex
with states and reasons, config overrides and file uploads (hostile paths refused)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conformance.conftest import ADMIN_HEADER, ADMIN_KEY
from tests.integration.stack import Stack, wait_for

ADMIN = {ADMIN_HEADER: ADMIN_KEY}
RESTRICTED = f"This protocol is restricted, expecting header '{ADMIN_HEADER}'"
CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"

IDENTITY_CONFIG = {
    "name": "uploaded",
    "backend": "python",
    "max_batch_size": 4,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]}],
}
IDENTITY_MODEL = b"""
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"] * 2}
"""


def failure(fn: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


def int8_inputs() -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, 16], "INT8")
        tensor.set_data_from_numpy(np.ones((1, 16), np.int8))
        inputs.append(tensor)
    return inputs


# ---- none mode and restricted protocols (frontends[1]) ---------------------------------------


def test_restricted_protocols_need_the_header(triton_stack: Stack) -> None:
    client = triton_stack.client(triton_stack.frontends[1])
    for call in (client.get_model_repository_index, client.get_inference_statistics):
        exc = failure(call)
        assert (exc.status(), exc.message()) == ("StatusCode.UNAVAILABLE", RESTRICTED)
    exc = failure(client.get_model_repository_index, headers={ADMIN_HEADER: "wrong"})
    assert exc.message() == RESTRICTED
    index = client.get_model_repository_index(headers=ADMIN)
    assert "simple" in {m.name for m in index.models}
    assert client.is_model_ready("simple")  # health is not restricted


def test_none_mode_refuses_load_and_unload_with_tritons_text(triton_stack: Stack) -> None:
    client = triton_stack.client(triton_stack.frontends[1])
    for call in (client.load_model, client.unload_model):
        exc = failure(call, "simple", headers=ADMIN)
        assert (exc.status(), exc.message()) == ("StatusCode.UNAVAILABLE", CONTROL_DISABLED)
    assert client.is_model_ready("simple")


# ---- explicit mode (frontends[0]) -------------------------------------------------------------


def test_unloaded_model_is_not_found_at_once_and_listed_as_unloaded(triton_stack: Stack) -> None:
    client = triton_stack.client()
    client.unload_model("simple_int8")
    try:
        wait_for(
            lambda: not client.is_model_ready("simple_int8"),
            timeout_s=10,
            what="simple_int8 unready after unload",
            watch=triton_stack.procs,
        )
        started = time.monotonic()
        exc = failure(client.infer, "simple_int8", int8_inputs())
        assert (exc.status(), exc.message()) == (
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'simple_int8' has no available versions",
        )
        assert time.monotonic() - started < 5  # answered, not retried until a deadline
        exc = failure(client.infer, "simple_int8", int8_inputs(), model_version="1")
        assert exc.message() == "Request for unknown model: 'simple_int8' version 1 is not found"
        index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
        entry = index[("simple_int8", "1")]
        assert (entry.state, entry.reason) == ("UNAVAILABLE", "unloaded")
        assert index[("simple", "1")].state == "READY"
    finally:
        client.load_model("simple_int8")
    triton_stack.wait_ready(["simple_int8"])
    client.infer("simple_int8", int8_inputs())


def test_config_override_applies_to_that_load_only(triton_stack: Stack) -> None:
    client = triton_stack.client()
    config = client.get_model_config("simple_identity").config
    assert config.max_batch_size == 8
    override = {
        "name": "simple_identity",
        "backend": "python",
        "max_batch_size": 2,
        "input": [{"name": "INPUT0", "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [-1]}],
    }
    client.load_model("simple_identity", config=json.dumps(override))
    wait_for(
        lambda: client.get_model_config("simple_identity").config.max_batch_size == 2,
        timeout_s=10,
        what="the override's max_batch_size announced",
        watch=triton_stack.procs,
    )
    client.load_model("simple_identity")  # a plain load reads the repository again
    wait_for(
        lambda: client.get_model_config("simple_identity").config.max_batch_size == 8,
        timeout_s=10,
        what="the repository's max_batch_size back",
        watch=triton_stack.procs,
    )


def test_uploaded_model_serves(triton_stack: Stack) -> None:
    client = triton_stack.client()
    client.load_model(
        "uploaded",
        config=json.dumps(IDENTITY_CONFIG),
        files={"file:1/model.py": IDENTITY_MODEL},
    )
    triton_stack.wait_ready(["uploaded"])
    tensor = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[1.5, -2.0]], np.float32))
    result = client.infer("uploaded", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[3.0, -4.0]])


@pytest.mark.parametrize("path", ["../escape.py", "/etc/cron.d/x", "1/../../x.py", ".hidden"])
def test_hostile_upload_paths_get_a_clean_error(triton_stack: Stack, path: str) -> None:
    client = triton_stack.client()
    exc = failure(
        client.load_model,
        "hostile",
        config=json.dumps({**IDENTITY_CONFIG, "name": "hostile"}),
        files={f"file:{path}": b"x = 1\n"},
    )
    assert exc.status() == "StatusCode.INVALID_ARGUMENT"
    assert "invalid file path" in exc.message()
    assert client.is_server_ready()


def test_failed_load_is_listed_with_its_reason(triton_stack: Stack) -> None:
    client = triton_stack.client()
    exc = failure(
        client.load_model,
        "broken",
        config=json.dumps({**IDENTITY_CONFIG, "name": "broken"}),
        files={"file:1/model.py": b"raise RuntimeError('cannot start')\n"},
    )
    assert exc.status() == "StatusCode.INVALID_ARGUMENT"
    assert exc.message().startswith(
        "load failed for model 'broken': version 1 is at UNAVAILABLE state: "
    )
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    entry = index[("broken", "1")]
    assert entry.state == "UNAVAILABLE"
    assert "cannot start" in entry.reason
