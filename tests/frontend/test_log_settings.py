"""LogSettings semantics without a server: Triton's settings, types and error texts; a refused
request changes nothing."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from fabric.logs import LevelSwitches, LogControl
from frontend.log_settings import SettingError, apply_settings, current_settings
from protos import grpc_service_pb2 as pb

Value = pb.LogSettingsRequest.SettingValue


@pytest.fixture
def control() -> Iterator[LogControl]:
    root = logging.getLogger()
    level = root.level
    handler = logging.StreamHandler(io.StringIO())
    yield LogControl("frontend", handler, LevelSwitches.from_level("INFO"), "text")
    root.setLevel(level)


def settings(control: LogControl) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, v in current_settings(control).settings.items():
        kind = v.WhichOneof("parameter_choice")
        assert kind is not None
        out[name] = getattr(v, kind)
    return out


def test_reads_every_triton_setting(control: LogControl) -> None:
    assert settings(control) == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }


def test_updates_only_what_is_given(control: LogControl) -> None:
    apply_settings(
        control,
        {"log_verbose_level": Value(uint32_param=2), "log_warning": Value(bool_param=False)},
    )
    got = settings(control)
    assert (got["log_verbose_level"], got["log_warning"], got["log_info"]) == (2, False, True)
    assert logging.getLogger().level == logging.DEBUG
    apply_settings(control, {"log_format": Value(string_param="json")})
    assert settings(control)["log_format"] == "json"
    apply_settings(control, {"log_format": Value(string_param="ISO8601")})
    assert settings(control)["log_format"] == "ISO8601"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"log_info": Value(uint32_param=1)}, "expect boolean for 'log_info'"),
        ({"log_error": Value(string_param="no")}, "expect boolean for 'log_error'"),
        ({"log_verbose_level": Value(bool_param=True)}, "expect int32 for 'log_verbose_level'"),
        ({"log_format": Value(bool_param=True)}, "expect string for 'log_format'"),
        ({"log_file": Value(bool_param=True)}, "expect string for 'log_file'"),
        ({"log_format": Value(string_param="xml")}, "invalid argument for log_format, got: xml"),
        ({"log_file": Value(string_param="/tmp/x.log")}, "log_file cannot be changed"),
    ],
)
def test_a_bad_value_is_refused_with_tritons_words_and_changes_nothing(
    control: LogControl, given: dict[str, pb.LogSettingsRequest.SettingValue], message: str
) -> None:
    before = settings(control)
    with pytest.raises(SettingError, match=message):
        apply_settings(control, {"log_info": Value(bool_param=False), **given})
    assert settings(control) == before


def test_unknown_settings_are_ignored_as_triton_ignores_them(control: LogControl) -> None:
    before = settings(control)
    apply_settings(control, {"log_colour": Value(string_param="red")})
    assert settings(control) == before


def test_empty_log_file_means_the_console_and_is_accepted(control: LogControl) -> None:
    apply_settings(control, {"log_file": Value(string_param="")})
    assert settings(control)["log_file"] == ""
