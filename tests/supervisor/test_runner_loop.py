"""The supervisor loop over small stand-in processes (``python -c``), not the real tiers:
restart after a crash, crash-loop give-up of one replica while the others run, the stop
order frontends -> workers -> brokers, SIGKILL after the grace, and a second signal."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable

from supervisor.plan import PortUse, ProcessSpec, Tier
from supervisor.policy import RestartConfig
from supervisor.runner import Supervisor

CHILD = """
import signal, sys, time
name, mode = sys.argv[1], sys.argv[2]
def term(*_):
    print("term", name, flush=True)
    if mode == "slow":
        time.sleep(1.0)
    if mode != "stubborn":
        sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("up", name, flush=True)
if mode == "crash":
    sys.exit(3)
while True:
    time.sleep(0.02)
"""
FAST = RestartConfig(initial_backoff_s=0.05, max_backoff_s=0.1, crash_loop_exits=3)


def spec(name: str, tier: Tier, mode: str = "run") -> ProcessSpec:
    return ProcessSpec(name, tier, ("-c", CHILD, name, mode), ())


def after(condition: Callable[[], bool], then: Callable[[], None], timeout_s: float = 60.0) -> None:
    """From a helper thread: when ``condition`` holds, ``then`` (e.g. signal ourselves)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        then()

    threading.Thread(target=watch, name="test-trigger", daemon=True).start()


def signal_self(*signums: signal.Signals) -> Callable[[], None]:
    def send() -> None:
        for signum in signums:
            os.kill(os.getpid(), signum)
            time.sleep(0.3)

    return send


def term_self() -> Callable[[], None]:
    return signal_self(signal.SIGTERM)


def test_crash_loop_gives_up_on_one_replica_and_the_rest_stop_in_order() -> None:
    out = io.StringIO()
    plan = [
        spec("broker-0", Tier.BROKER),
        spec("worker-0", Tier.WORKER, "crash"),
        spec("worker-1", Tier.WORKER),
        spec("frontend-0", Tier.FRONTEND),
    ]
    sup = Supervisor(plan, out=out, grace_s=10.0, restart=FAST)
    after(lambda: "giving up on it" in out.getvalue(), term_self())
    started = time.monotonic()
    assert sup.run() == 0
    assert time.monotonic() - started < 30.0
    text = out.getvalue()
    assert text.count("up worker-0") == 3, text
    assert "worker-0 exited 3 times within 60s (last code 3); crash loop, giving up on it" in text
    assert text.count("up worker-1") == 1, text
    terms = [line.split("| ")[1] for line in text.splitlines() if "| term" in line]
    assert terms[0] == "term frontend-0", text
    assert terms[1] == "term worker-1", text
    assert terms[2] == "term broker-0", text
    assert text.rstrip().endswith("[run] [shutdown] all stopped")
    assert all(not r.alive() for r in sup.replicas)


def test_a_killed_replica_is_restarted() -> None:
    out = io.StringIO()
    plan = [spec("broker-0", Tier.BROKER), spec("worker-0", Tier.WORKER),
            spec("frontend-0", Tier.FRONTEND)]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=10.0, restart=FAST)

    def kill_worker() -> None:
        proc = sup.replicas[1].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)

    after(lambda: "up worker-0" in out.getvalue(), kill_worker)
    after(lambda: out.getvalue().count("up worker-0") == 2, term_self())
    assert sup.run() == 0
    text = out.getvalue()
    assert "[run] worker-0 exited with -9; restart 1 in 0.1s" in text
    assert "[run] restarting worker-0" in text
    assert text.count("up broker-0") == 1 and text.count("up frontend-0") == 1


def test_every_replica_of_a_tier_given_up_stops_everything_with_1() -> None:
    out = io.StringIO()
    plan = [spec("broker-0", Tier.BROKER, "crash"), spec("worker-0", Tier.WORKER),
            spec("frontend-0", Tier.FRONTEND)]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=10.0, restart=FAST)
    assert sup.run() == 1
    assert "[run] no broker left; stopping" in out.getvalue()


def test_stubborn_child_is_killed_after_the_grace() -> None:
    out = io.StringIO()
    plan = [spec("broker-0", Tier.BROKER), spec("worker-0", Tier.WORKER, "stubborn"),
            spec("frontend-0", Tier.FRONTEND)]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=0.5, restart=FAST)
    after(lambda: out.getvalue().count("up ") == 3, term_self())
    started = time.monotonic()
    assert sup.run() == 0
    assert time.monotonic() - started < 20.0
    text = out.getvalue()
    assert "[run] [shutdown] worker-0 still running after 0.5s; SIGKILL" in text, text
    assert "term broker-0" in text


def test_second_ctrl_c_kills_at_once() -> None:
    out = io.StringIO()
    plan = [spec("broker-0", Tier.BROKER), spec("worker-0", Tier.WORKER),
            spec("frontend-0", Tier.FRONTEND, "stubborn")]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=60.0, restart=FAST)
    after(lambda: out.getvalue().count("up ") == 3, signal_self(signal.SIGINT, signal.SIGINT))
    started = time.monotonic()
    assert sup.run() == 0
    assert time.monotonic() - started < 30.0
    assert "[run] [shutdown] second Ctrl-C: killing every process now" in out.getvalue()


def test_a_repeated_sigterm_still_stops_in_order() -> None:
    """``kill -TERM -<pgid>`` of ``make run``: SIGTERM from the kill, then make forwards one."""
    out = io.StringIO()
    plan = [spec("broker-0", Tier.BROKER), spec("worker-0", Tier.WORKER),
            spec("frontend-0", Tier.FRONTEND, "slow")]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=60.0, restart=FAST)
    after(lambda: out.getvalue().count("up ") == 3, signal_self(signal.SIGTERM, signal.SIGTERM))
    assert sup.run() == 0
    text = out.getvalue()
    assert "SIGTERM again: already stopping" in text
    terms = [line.split("| ")[1] for line in text.splitlines() if "| term" in line]
    assert terms == ["term frontend-0", "term worker-0", "term broker-0"], text


def test_a_child_that_cannot_bind_is_given_up_in_one_line() -> None:
    out = io.StringIO()
    code = "print('OSError: [Errno 98] Address already in use', flush=True); raise SystemExit(1)"
    taken = ProcessSpec(
        "frontend-1", Tier.FRONTEND, ("-c", code), (PortUse("127.0.0.1", 8123, "metrics"),)
    )
    plan = [spec("broker-0", Tier.BROKER), spec("worker-0", Tier.WORKER),
            spec("frontend-0", Tier.FRONTEND), taken]  # fmt: skip
    sup = Supervisor(plan, out=out, grace_s=10.0, restart=FAST)
    after(lambda: "giving up on it" in out.getvalue(), term_self())
    assert sup.run() == 0
    text = out.getvalue()
    assert "[run] frontend-1 could not bind (8123): address already in use; giving up on it" in text
    assert "restarting frontend-1" not in text
