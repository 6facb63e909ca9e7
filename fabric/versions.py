"""The one ordering of model version names, shared by every tier.

Triton names versions by directory, so a version is normally a canonical non-negative integer
("1", "2", "10"), but the wire carries any string. The order:

- numeric versions (ASCII digits only) compare as integers, so "10" comes after "9";
- every numeric version sorts above every non-numeric one, so "latest" (the greatest key) is the
  newest numbered version whenever one exists;
- non-numeric versions compare as strings among themselves.

Non-ASCII digits (superscript two, Arabic-Indic digits) count as non-numeric: ``str.isdigit``
accepts them, ``int`` may not.
"""

from __future__ import annotations

VersionKey = tuple[int, int, str]


def version_sort_key(v: str) -> VersionKey:
    """Sort key for a version name: ``max(versions, key=version_sort_key)`` is the latest."""
    if v.isascii() and v.isdigit():
        return (1, int(v), "")
    return (0, 0, v)
