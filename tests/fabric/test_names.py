"""fabric.names: the one name rule of every tier, and bounded quoting of client values."""

from __future__ import annotations

import pytest

from fabric import errors, names
from fabric.errors import RequestError


@pytest.mark.parametrize(
    "name", ["simple", "mlp", "resnet-50_v2.onnx", "a" * names.MAX_MODEL_NAME_CHARS, "модель"]
)
def test_good_model_names_pass(name: str) -> None:
    assert names.valid_model_name(name)
    names.check_model(name, "1")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a" * (names.MAX_MODEL_NAME_CHARS + 1), "longer than 256"),
        ("../etc", "'/'"),
        ("x/y", "'/'"),
        ("x\\y", "'\\\\'"),
        ("nul\0byte", "non-printable"),
        ("new\nline", "non-printable"),
        (".", "relative path"),
        ("..", "relative path"),
    ],
)
def test_bad_model_names_say_why(name: str, problem: str) -> None:
    assert not names.valid_model_name(name)
    with pytest.raises(RequestError) as info:
        names.check_model(name)
    assert info.value.code == errors.INVALID_ARGUMENT
    assert "model_name" in info.value.message
    assert problem in info.value.message


def test_empty_name_is_required_but_empty_version_means_any() -> None:
    assert not names.valid_model_name("")
    assert names.valid_version("")
    with pytest.raises(RequestError, match="model_name is required"):
        names.check_model("")
    names.check_model("simple", "")


def test_version_has_its_own_bound_and_field() -> None:
    names.check_model("simple", "9" * names.MAX_VERSION_CHARS)
    with pytest.raises(RequestError) as info:
        names.check_model("simple", "9" * (names.MAX_VERSION_CHARS + 1))
    assert info.value.code == errors.INVALID_ARGUMENT
    assert "model_version" in info.value.message
    assert not names.valid_version("1/../2")


def test_custom_field_name_is_used() -> None:
    with pytest.raises(RequestError, match="invalid name "):
        names.check_model("a/b", name_field="name")


def test_message_for_a_megabyte_name_is_short() -> None:
    huge = "x" * (1 << 20)
    with pytest.raises(RequestError) as info:
        names.check_model(huge)
    message = info.value.message
    assert len(message.encode()) < 300, message
    assert f"({len(huge)} chars)" in message


def test_quote_escapes_controls_and_cuts() -> None:
    assert names.quote("abc") == "'abc'"
    assert names.quote("a\0b") == "'a\\x00b'"
    cut = names.quote("y" * 100, limit=10)
    assert cut == "'" + "y" * 10 + "'... (100 chars)"
