"""Model names are checked before use, and errors neither leak paths nor echo megabytes.

A name that is too long, or holds a path separator or NUL, is refused INVALID_ARGUMENT naming
the field, by every RPC that takes one; the message quotes at most a few dozen characters of it.
Models that fail to load are reported without the repository's absolute path.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.helpers import (
    check_simple,
    expect_error,
    rand_int32,
    raw_simple_request,
    raw_stub,
    simple_inputs,
)
from tests.integration.stack import Stack

MAX_MESSAGE_BYTES = 300
LONG_NAME = "m" * 300
HUGE_NAME = "h" * (1 << 20)
BAD_NAMES = {
    "300 chars": LONG_NAME,
    "1 MB": HUGE_NAME,
    "traversal": "../simple",
    "NUL": "sim\0ple",
}
PATH_IN_TEXT = re.compile(r"/[\w.-]+/")


def assert_short_and_pathless(message: str, repo: Path) -> None:
    assert len(message.encode()) < MAX_MESSAGE_BYTES, f"{len(message.encode())} bytes: {message!r}"
    assert str(repo) not in message, message
    assert not PATH_IN_TEXT.search(message), f"a path in {message!r}"


def calls(client: grpcclient.InferenceServerClient, name: str) -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(3)
    inputs = simple_inputs(rand_int32(rng, 1), rand_int32(rng, 1))
    return {
        "infer": lambda: client.infer(name, inputs, client_timeout=30),
        "ModelReady": lambda: client.is_model_ready(name, client_timeout=30),
        "ModelMetadata": lambda: client.get_model_metadata(name, client_timeout=30),
        "ModelConfig": lambda: client.get_model_config(name, client_timeout=30),
        "ModelStatistics": lambda: client.get_inference_statistics(name, client_timeout=30),
        "RepositoryModelLoad": lambda: client.load_model(name, client_timeout=30),
        "RepositoryModelUnload": lambda: client.unload_model(name, client_timeout=30),
    }


@pytest.mark.parametrize("which", list(BAD_NAMES))
def test_bad_model_names_are_invalid_argument_with_short_messages(
    stack: Stack, model_repo: Path, which: str
) -> None:
    client = stack.client()
    for rpc, call in calls(client, BAD_NAMES[which]).items():
        exc = expect_error("INVALID_ARGUMENT", call)
        message = exc.message()
        assert "name" in message, f"{rpc}: the field is not named in {message!r}"
        assert_short_and_pathless(message, model_repo)
    check_simple(client)


def test_bad_names_on_a_stream_are_answered_per_request(stack: Stack, model_repo: Path) -> None:
    channel, stub = raw_stub(stack.frontend.url)
    rng = np.random.default_rng(4)
    requests = []
    for name in (LONG_NAME, HUGE_NAME, "simple"):
        request = raw_simple_request(rand_int32(rng, 1), rand_int32(rng, 1))
        request.model_name = name
        request.id = name[:8]
        requests.append(request)
    try:
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    finally:
        channel.close()
    assert len(responses) == 3
    failed = [r for r in responses if r.error_message]
    assert len(failed) == 2, responses
    for response in failed:
        assert (
            "INVALID_ARGUMENT" in response.error_message or "model_name" in response.error_message
        )
        assert_short_and_pathless(response.error_message, model_repo)
        assert len(response.infer_response.model_name) <= 256
    assert len(failed[0].SerializeToString()) < 1024


def test_version_string_is_bounded(stack: Stack) -> None:
    channel, stub = raw_stub(stack.frontend.url)
    rng = np.random.default_rng(5)
    request = raw_simple_request(rand_int32(rng, 1), rand_int32(rng, 1))
    request.model_version = "9" * 100_000
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "model_version" in details
    assert len(details.encode()) < MAX_MESSAGE_BYTES


CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""
BROKEN_CONFIG = 'name: "badconfig"\nmax_batch_size: "many"\n'


def test_load_errors_do_not_name_the_repository_path(
    make_stack: Callable[[], Stack], model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "private" / "repository"
    shutil.copytree(model_repo / "simple", repo / "simple")
    (repo / "nofile" / "1").mkdir(parents=True)
    (repo / "nofile" / "config.pbtxt").write_text(CONFIG.format(name="nofile"))
    (repo / "badconfig" / "1").mkdir(parents=True)
    (repo / "badconfig" / "config.pbtxt").write_text(BROKEN_CONFIG)
    (repo / "syntax" / "1").mkdir(parents=True)
    (repo / "syntax" / "config.pbtxt").write_text(CONFIG.format(name="syntax"))
    (repo / "syntax" / "1" / "model.py").write_text("def broken(:\n")

    stack = make_stack()
    stack.start_broker()
    stack.start_worker(model_repository=repo)
    stack.start_frontend()
    stack.wait_live()
    stack.wait_ready(["simple"])
    client = stack.client()
    for model in ("nofile", "badconfig", "syntax"):
        exc = expect_error(
            "INVALID_ARGUMENT",  # Triton's code for a load that failed
            client.load_model,
            model,
            client_timeout=60,
        )
        message = exc.message()
        assert model in message, message
        assert str(repo) not in message and str(tmp_path) not in message, message
        assert "private" not in message, message
    exc = expect_error("NOT_FOUND", client.load_model, "m" * 250, client_timeout=60)
    assert_short_and_pathless(exc.message(), repo)
    check_simple(client)
