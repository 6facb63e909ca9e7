"""Logs of real processes: JSON lines with the fields log shippers index, no WARNING or ERROR
for an orderly start and stop, and LogSettings changing a frontend's levels at run time
(through tritonclient, as a Triton user would)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from .helpers import rand_int32, simple_inputs
from .stack import Stack, wait_for

pytestmark = pytest.mark.timeout(180)

LEVELS_NOT_EXPECTED = ("WARNING", "ERROR", "CRITICAL")


def start_and_serve(stack: Stack, *args: str) -> None:
    stack.start_broker(extra_args=args)
    stack.start_worker(extra_args=args)
    stack.start_frontend(extra_args=args)
    stack.wait_live()
    stack.wait_ready(["simple"])
    rng = np.random.default_rng(1)
    stack.client().infer("simple", simple_inputs(rand_int32(rng, 1), rand_int32(rng, 1)))


def test_json_logs_and_an_orderly_stop_without_warnings(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    start_and_serve(stack, "--log-format", "json")
    stack.stop()
    for proc in stack.procs:
        assert proc.popen.returncode == 0, proc.describe_exit()
        records = [
            json.loads(line) for line in proc.log_path.read_text().splitlines() if line.strip()
        ]
        assert records, f"{proc.name} logged nothing"
        tier = proc.name.rstrip("0123456789")
        for r in records:
            assert {"time", "level", "tier", "process", "logger", "message"} <= r.keys(), r
            assert r["tier"] == tier and r["process"] == proc.pid
            assert r["level"] not in LEVELS_NOT_EXPECTED, f"{proc.name}: {r}"
        assert any(r["message"].startswith(f"[shutdown] {tier}") for r in records), proc.name


def test_text_logs_of_an_orderly_stop_have_no_warnings(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    start_and_serve(stack)
    stack.stop()
    for proc in stack.procs:
        assert proc.popen.returncode == 0, proc.describe_exit()
        for line in proc.log_path.read_text().splitlines():
            words = line.split(" ")
            assert len(words) > 3 and words[2] not in LEVELS_NOT_EXPECTED, f"{proc.name}: {line}"


def test_log_settings_change_the_frontends_levels_at_run_time(
    make_stack: Callable[[], Stack],
) -> None:
    stack = make_stack()
    stack.start_broker()
    frontend = stack.start_frontend(extra_args=["--log-format", "json"])
    stack.wait_live()
    client = stack.client()
    assert client.get_log_settings(as_json=True)["settings"] == {
        "log_file": {"string_param": ""},
        "log_info": {"bool_param": True},
        "log_warning": {"bool_param": True},
        "log_error": {"bool_param": True},
        "log_verbose_level": {"uint32_param": 0},
        "log_format": {"string_param": "json"},
    }
    assert "logging" in client.get_server_metadata().extensions

    def changes_logged() -> int:
        return frontend.log_text().count("log settings changed")

    client.update_log_settings({"log_verbose_level": 1})
    wait_for(lambda: changes_logged() == 1, timeout_s=10, what="INFO line", watch=[frontend])
    client.update_log_settings({"log_info": False})  # its own INFO line is now filtered out
    client.update_log_settings({"log_info": True})
    wait_for(lambda: changes_logged() == 2, timeout_s=10, what="INFO line", watch=[frontend])
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_verbose_level"] == {"uint32_param": 1}
    assert settings["log_info"] == {"bool_param": True}

    # (tritonclient picks each setting's type itself; wrong types: tests/frontend.)
    with pytest.raises(Exception, match="invalid argument for log_format, got: xml"):
        client.update_log_settings({"log_format": "xml"})
    assert client.get_log_settings(as_json=True)["settings"] == settings
