"""Configuration from flags and environment: defaults, fallbacks, precedence, errors and help."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from broker.__main__ import parse_args as broker_args
from fabric.cli import FabricSettings, build_config, setting
from frontend.__main__ import parse_args as frontend_args
from worker.__main__ import parse_args as worker_args


@dataclass(frozen=True)
class ToyConfig(FabricSettings):
    """Toy settings"""

    port: int = setting(8001, "port to serve on")
    ratio: float = setting(0.5, "a fraction, 0.5 = 50%")
    name: str = setting("toy", "a name")
    peers: tuple[str, ...] = setting(("a", "b"), "peers, comma separated", flag="--peer")
    insecure: bool = setting(False, "skip encryption", env="FABRIC_INSECURE")


def build(argv: list[str], environ: dict[str, str] | None = None) -> ToyConfig:
    return build_config(
        ToyConfig, argv, prog="toy", description="Toy.", env_prefix="TOY", environ=environ or {}
    )


def test_no_flags_no_environment_gives_the_dataclass_defaults() -> None:
    assert build([]) == ToyConfig()


def test_environment_fills_in_for_missing_flags() -> None:
    config = build(
        [],
        {"TOY_PORT": "9000", "TOY_RATIO": "0.25", "TOY_PEERS": "x, y,", "LOG_LEVEL": "debug"},
    )
    assert (config.port, config.ratio, config.peers) == (9000, 0.25, ("x", "y"))
    assert config.log_level == "DEBUG"  # matched case-insensitively, stored as listed
    assert config.metrics_port == 0  # inherited fields take the tier's prefix: TOY_METRICS_PORT
    assert build([], {"TOY_METRICS_PORT": "9100"}).metrics_port == 9100


def test_flag_beats_environment_and_the_last_flag_wins() -> None:
    config = build(["--port", "1", "--port", "2", "--peer", "z"], {"TOY_PORT": "9000"})
    assert (config.port, config.peers) == (2, ("z",))


def test_empty_string_from_environment_is_a_value_for_strings() -> None:
    assert build([], {"TOY_NAME": ""}).name == ""


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, False),
        (["--insecure"], {}, True),
        (["--no-insecure"], {"FABRIC_INSECURE": "yes"}, False),
        ([], {"FABRIC_INSECURE": "1"}, True),
        ([], {"FABRIC_INSECURE": "On"}, True),
        ([], {"FABRIC_INSECURE": "false"}, False),
    ],
)
def test_bool_flags(argv: list[str], environ: dict[str, str], expected: bool) -> None:
    assert build(argv, environ).insecure is expected


@pytest.mark.parametrize(
    ("argv", "environ", "names"),
    [
        ([], {"TOY_PORT": "eighty"}, ["--port", "TOY_PORT", "'eighty'", "environment"]),
        (["--port", "eighty"], {}, ["--port", "TOY_PORT", "'eighty'", "command line"]),
        ([], {"TOY_RATIO": "half"}, ["--ratio", "TOY_RATIO", "not a float"]),
        ([], {"FABRIC_INSECURE": "maybe"}, ["--insecure", "FABRIC_INSECURE", "true/false"]),
        ([], {"LOG_LEVEL": "LOUD"}, ["--log-level", "LOG_LEVEL", "choose from DEBUG"]),
    ],
)
def test_bad_value_is_a_flag_error_with_exit_status_2(
    argv: list[str],
    environ: dict[str, str],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build(argv, environ)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: toy")
    assert "Traceback" not in err
    for name in names:
        assert name in err


def test_help_shows_flags_environment_names_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--port INT port to serve on [TOY_PORT] (default: 8001)" in out
    assert "--peer LIST peers, comma separated [TOY_PEERS] (default: a,b)" in out
    assert "--insecure, --no-insecure skip encryption [FABRIC_INSECURE] (default: false)" in out
    assert "a fraction, 0.5 = 50% [TOY_RATIO] (default: 0.5)" in out
    assert "[LOG_LEVEL] (default: INFO)" in out
    assert out.index("Toy settings") < out.index("Settings every tier has")  # own flags first


def test_a_field_without_setting_is_refused() -> None:
    @dataclass(frozen=True)
    class Bare:
        port: int = 1

    with pytest.raises(TypeError, match=r"Bare\.port"):
        build_config(Bare, [], prog="bare", description="", env_prefix="BARE", environ={})


def test_existing_flag_and_environment_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BROKER_FRONTEND_BIND": "tcp://127.0.0.1:7001",
        "FRONTEND_BROKERS": "tcp://a:1,tcp://b:2",
        "FRONTEND_HOST": "0.0.0.0",
        "FRONTEND_PORT": "9001",
        "WORKER_BROKERS": "tcp://c:3",
        "WORKER_DEVICE": "cpu",
        "WORKER_INLINE_COMPUTE_MS": "0",
        "WORKER_MODEL_REPOSITORY": "/m",
        "FABRIC_HEARTBEAT_INTERVAL_S": "0.5",
        "FABRIC_MAX_MESSAGE_BYTES": "1024",
        "FABRIC_CURVE_SERVER_KEY": "server.key",
    }.items():
        monkeypatch.setenv(name, value)
    broker = broker_args(["--worker-bind", "tcp://127.0.0.1:7002", "--heartbeat-liveness", "5"])
    assert broker.frontend_bind == "tcp://127.0.0.1:7001"
    assert (broker.worker_bind, broker.heartbeat_liveness) == ("tcp://127.0.0.1:7002", 5)
    assert (broker.heartbeat_interval_s, broker.max_message_bytes) == (0.5, 1024)
    frontend = frontend_args(["--max-message-bytes", "4096", "--tls-key-file", "k.pem"])
    assert frontend.brokers == ("tcp://a:1", "tcp://b:2")
    assert (frontend.host, frontend.port, frontend.max_message_bytes) == ("0.0.0.0", 9001, 4096)
    assert (frontend.tls_key_file, frontend.curve_server_key) == ("k.pem", "server.key")
    worker = worker_args(["--torch-threads", "1", "--broker", "tcp://d:4, tcp://e:5"])
    assert worker.brokers == ("tcp://d:4", "tcp://e:5")
    assert (worker.device, worker.inline_compute_ms, worker.model_repository) == ("cpu", 0.0, "/m")
    assert (worker.torch_threads, worker.max_message_bytes) == (1, 1024)


def test_a_real_process_reports_a_bad_environment_value_without_a_traceback() -> None:
    env = {**os.environ, "BROKER_MAX_QUEUED": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "broker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "argument --max-queued [BROKER_MAX_QUEUED]: invalid int value 'lots'" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_are_on_unless_turned_off_and_log_format_is_a_choice() -> None:
    config = build([])
    assert (config.metrics, config.metrics_port, config.log_format) == (True, 0, "text")
    assert build(["--no-metrics", "--log-format", "JSON"]).log_format == "json"
    assert build([], {"TOY_METRICS": "false", "LOG_FORMAT": "json"}).metrics is False
