"""Fixtures shared by the worker tests."""

from .test_runtime import ragged  # noqa: F401 (a ragged Python model on the CPU, and its probe)
