"""Triton's texts: version strings, and the shapes of the templates clients match on."""

from __future__ import annotations

import pytest

from fabric import errors
from fabric import triton_errors as texts
from fabric.errors import RequestError


@pytest.mark.parametrize("version", ["", "0", "1", "7", "123456789012345678"])
def test_canonical_versions_are_accepted(version: str) -> None:
    assert texts.parse_version(version) == version


@pytest.mark.parametrize(
    "version", ["abc", "1.0", " 1", "01", "+1", "1abc", "\u0661", "-0", "9" * 19]
)
def test_unparsable_versions_get_tritons_stol_text(version: str) -> None:
    with pytest.raises(RequestError) as info:
        texts.parse_version(version)
    assert info.value.code == errors.INVALID_ARGUMENT
    assert info.value.message == (
        f"failed to get model version from specified version string '{version}' "
        "(details: stol), version should be an integral value > 0"
    )


def test_negative_version_gets_tritons_text_with_its_odd_space() -> None:
    with pytest.raises(RequestError) as info:
        texts.parse_version("-3")
    assert info.value.code == errors.INVALID_ARGUMENT
    assert info.value.message == (
        "invalid model version specified '-3' , version should be an integral value > 0"
    )


def test_model_lookup_texts() -> None:
    assert texts.unknown_model("x") == "Request for unknown model: 'x' is not found"
    assert texts.unknown_version("x", "3") == (
        "Request for unknown model: 'x' version 3 is not found"
    )
    assert texts.no_available_versions("x") == (
        "Request for unknown model: 'x' has no available versions"
    )


def test_input_count_lists_names_as_triton_does() -> None:
    assert texts.input_count("simple", 2, [], ["INPUT0", "INPUT1"]) == (
        "expected 2 inputs but got 0 inputs for model 'simple'. Got input(s) [], but missing "
        "required input(s) ['INPUT0','INPUT1']. Please provide all required input(s)."
    )


def test_request_prefix_only_with_an_id() -> None:
    assert texts.request_prefix("") == ""
    assert texts.request_prefix("r1") == "[request id: r1] "
