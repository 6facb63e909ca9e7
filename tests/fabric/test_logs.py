"""fabric.logs: text and JSON lines, request fields from ``log_context`` or ``extra=``, and
Triton's level switches."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from fabric.logs import (
    LevelSwitches,
    LogControl,
    configure_logging,
    current_log_context,
    log_context,
)

Captured = tuple[io.StringIO, LogControl]


@pytest.fixture
def captured() -> Iterator[Captured]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    control = configure_logging("INFO", "broker", "json", stream=stream)
    try:
        yield stream, control
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_fields_log_shippers_index(captured: Captured) -> None:
    stream, _ = captured
    log = logging.getLogger("broker.server")
    with log_context(request_id="r-7", model="simple", version="1", trace_id="abc"):
        log.info("dispatched %s", "it")
    log.info("no request here")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["message"] == "dispatched it"
    assert (first["level"], first["tier"], first["logger"]) == ("INFO", "broker", "broker.server")
    assert isinstance(first["process"], int)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert (first["request_id"], first["model"], first["version"], first["trace_id"]) == (
        "r-7",
        "simple",
        "1",
        "abc",
    )
    assert "request_id" not in second and "model" not in second


def test_extra_wins_over_the_context_and_exceptions_stay_in_one_object(captured: Captured) -> None:
    stream, _ = captured
    log = logging.getLogger("t")
    with log_context(model="outer"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra={"model": "inner"})
    (only,) = lines(stream)
    record = json.loads(only)
    assert record["model"] == "inner"
    assert record["level"] == "ERROR"
    assert "ValueError: boom" in record["exception"]


def test_text_lines_end_with_the_known_request_fields(captured: Captured) -> None:
    stream, control = captured
    control.set_format("text")
    with log_context(request_id="r-1", model="m"):
        logging.getLogger("x").warning("slow")
    (line,) = lines(stream)
    assert line.endswith("WARNING broker x: slow [request_id=r-1 model=m]")


def test_iso8601_format_writes_utc_times(captured: Captured) -> None:
    stream, control = captured
    control.set_format("ISO8601")
    logging.getLogger("x").info("hello")
    (line,) = lines(stream)
    stamp = line.split(" ")[0]
    assert stamp.endswith("Z") and stamp[10] == "T"


def test_context_follows_an_asyncio_task_and_is_undone_after_the_block() -> None:
    async def call(rid: str) -> str:
        with log_context(request_id=rid):
            await asyncio.sleep(0)
            return current_log_context().request_id

    async def main() -> list[str]:
        return list(await asyncio.gather(call("a"), call("b")))

    assert asyncio.run(main()) == ["a", "b"]
    assert current_log_context().request_id == ""


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("DEBUG", LevelSwitches(True, True, True, 1)),
        ("INFO", LevelSwitches(True, True, True, 0)),
        ("WARNING", LevelSwitches(False, True, True, 0)),
        ("ERROR", LevelSwitches(False, False, True, 0)),
    ],
)
def test_log_level_flag_sets_the_switches(level: str, expected: LevelSwitches) -> None:
    assert LevelSwitches.from_level(level) == expected


def test_switches_filter_each_level_and_debug_needs_verbose(captured: Captured) -> None:
    stream, control = captured
    log = logging.getLogger("x")
    log.debug("hidden")
    control.switches.warning = False
    control.switches.verbose = 1
    control.apply_levels()
    log.debug("shown debug")
    log.warning("hidden warning")
    log.error("shown error")
    assert [json.loads(line)["message"] for line in lines(stream)] == ["shown debug", "shown error"]
    assert logging.getLogger().level == logging.DEBUG
