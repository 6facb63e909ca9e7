"""The shared version ordering: numbers numerically, numbers above names, names by string."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fabric.versions import version_sort_key


def test_numeric_versions_sort_as_integers() -> None:
    assert sorted(["10", "9", "1", "2"], key=version_sort_key) == ["1", "2", "9", "10"]


def test_numeric_versions_sort_above_names() -> None:
    assert sorted(["3", "beta", "1", "alpha"], key=version_sort_key) == ["alpha", "beta", "1", "3"]
    assert max(["latest", "2", "zzz"], key=version_sort_key) == "2"


def test_names_sort_as_strings_when_no_number_exists() -> None:
    assert max(["alpha", "beta"], key=version_sort_key) == "beta"


def test_non_ascii_digits_are_names_not_numbers() -> None:
    assert version_sort_key("²") == (0, 0, "²")  # int("²") would raise
    assert max(["²", "1"], key=version_sort_key) == "1"


def test_leading_zeros_compare_by_value() -> None:
    assert version_sort_key("007") == version_sort_key("7")


@given(st.lists(st.text(max_size=4)))
def test_any_strings_sort_without_error_and_numbers_come_last(versions: list[str]) -> None:
    ordered = sorted(versions, key=version_sort_key)
    numeric = [v.isascii() and v.isdigit() for v in ordered]
    assert numeric == sorted(numeric)  # all names, then all numbers
    numbers = [int(v) for v, n in zip(ordered, numeric, strict=True) if n]
    assert numbers == sorted(numbers)
