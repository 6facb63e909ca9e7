"""The rate-limited logger with a fake clock: per-key and total budgets, one summary per window,
bounded memory however many keys appear."""

from __future__ import annotations

import logging

import pytest

from fabric import ratelog
from fabric.ratelog import RateLimitedLog

LOGGER = "tests.ratelog"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_first_lines_per_key_then_a_summary_once_the_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = RateLimitedLog(
        logging.getLogger(LOGGER), "bad things", per_key=3, total=100, interval_s=10, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        logged = [log.warning("peer-a", "bad thing %d", i) for i in range(1000)]
        assert logged == [True] * 3 + [False] * 997
        assert log.warning("peer-b", "other peer")  # its own budget
        assert log.held_back == 997
        clock.now_s += 9.9
        log.flush()
        assert _lines(caplog) == ["bad thing 0", "bad thing 1", "bad thing 2", "other peer"]
        clock.now_s += 0.2
        log.flush()
        assert _lines(caplog)[-1] == "997 more bad things from 1 peers not logged in the last 10 s"
        assert log.held_back == 0
        assert log.warning("peer-a", "a new window")  # budgets start again
        clock.now_s += 20
        log.flush()  # nothing held back: no summary
    assert _lines(caplog)[-1] == "a new window"
    assert len(_lines(caplog)) == 6


def test_total_budget_caps_lines_across_keys(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLog(
        logging.getLogger(LOGGER), "bad things", per_key=2, total=5, interval_s=10, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(50):
            log.warning(f"peer-{i}", "from %d", i)
        clock.now_s += 10
        log.flush()
    lines = _lines(caplog)
    assert lines[:5] == [f"from {i}" for i in range(5)]
    assert lines[5:] == ["45 more bad things from 45 peers not logged in the last 10 s"]


def test_memory_stays_bounded_with_endless_new_keys(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelog, "MAX_KEYS_TRACKED", 8)
    clock = FakeClock()
    log = RateLimitedLog(
        logging.getLogger(LOGGER), "bad things", per_key=1, total=1000, interval_s=10, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(500):
            log.warning(f"peer-{i}", "from %d", i)
            log.warning(f"peer-{i}", "again from %d", i)
    assert len(log._lines) <= 9 and len(log._held) <= 9
    # 8 peers of their own, the rest share one line of budget.
    assert len(_lines(caplog)) == 9
    assert log.held_back == 1000 - 9


def test_exceptions_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger(LOGGER), "errors", clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        try:
            raise KeyError("boom")
        except KeyError:
            log.log(logging.ERROR, "peer", "failed", exc_info=True)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is KeyError
