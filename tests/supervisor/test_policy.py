"""RestartPolicy driven by a fake clock: backoff growth, cap, reset after a stable run, and
the crash-loop give-up (5 exits within 60 s by default)."""

from __future__ import annotations

from supervisor.policy import RestartConfig, RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_for(policy: RestartPolicy, clock: FakeClock, seconds: float) -> None:
    policy.started()
    clock.now += seconds


def test_first_exit_restarts_after_initial_backoff() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock)
    run_for(policy, clock, 5.0)
    d = policy.exited()
    assert not d.give_up
    assert d.delay_s == 0.5
    assert d.restart_at == clock.now + 0.5
    assert policy.restarts == 1


def test_backoff_doubles_and_is_capped() -> None:
    clock = FakeClock()
    cfg = RestartConfig(crash_loop_exits=100)
    policy = RestartPolicy(clock, cfg)
    delays = []
    for _ in range(8):
        run_for(policy, clock, 1.0)
        delays.append(policy.exited().delay_s)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_resets_after_a_stable_run() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock)
    for _ in range(3):
        run_for(policy, clock, 1.0)
        policy.exited()
    run_for(policy, clock, 31.0)
    assert policy.exited().delay_s == 0.5


def test_five_exits_within_a_minute_give_up() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock)
    decisions = []
    for _ in range(5):
        run_for(policy, clock, 2.0)
        decisions.append(policy.exited())
        clock.now += decisions[-1].delay_s
    assert [d.give_up for d in decisions] == [False, False, False, False, True]
    assert decisions[-1].exits_in_window == 5
    assert policy.gave_up


def test_exits_spread_beyond_the_window_never_give_up() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock)
    for _ in range(20):
        run_for(policy, clock, 16.0)  # 4 exits per 64 s: under 5 per 60 s
        d = policy.exited()
        assert not d.give_up
        clock.now += d.delay_s
    assert policy.restarts == 20


def test_exit_without_start_counts() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock, RestartConfig(crash_loop_exits=2))
    assert not policy.exited().give_up
    assert policy.exited().give_up


def test_give_up_now() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock)
    d = policy.give_up()
    assert d.give_up and policy.gave_up
