"""The per-model policy read from a model config, and the latency tracker behind p95 hedging."""

from __future__ import annotations

import pytest

from fabric.protocol import FLAG_NON_IDEMPOTENT
from frontend.policy import (
    DEFAULT_POLICY,
    MIN_HEDGE_DELAY_S,
    P95_MIN_SAMPLES,
    LatencyTracker,
    ModelPolicy,
    policy_from_config,
)
from protos import model_config_pb2 as mc


def config(timeout_us: int = 0, **params: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="m")
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    if timeout_us:
        cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds = timeout_us
    return cfg


# ---- ModelPolicy / policy_from_config ---------------------------------------------------------


def test_a_plain_config_gives_the_default_policy() -> None:
    assert policy_from_config(config()) == DEFAULT_POLICY == ModelPolicy()
    assert DEFAULT_POLICY.idempotent
    assert DEFAULT_POLICY.default_timeout_s is None
    assert DEFAULT_POLICY.hedge_after_s is None and not DEFAULT_POLICY.hedge_p95


@pytest.mark.parametrize("value", ["false", "0", "no", " False ", "NO"])
def test_idempotent_false_marks_the_model_non_idempotent(value: str) -> None:
    policy = policy_from_config(config(idempotent=value))
    assert policy.flags == FLAG_NON_IDEMPOTENT
    assert not policy.idempotent


@pytest.mark.parametrize("value", ["true", "1", "yes", "", "maybe"])
def test_other_idempotent_values_keep_the_model_idempotent(value: str) -> None:
    policy = policy_from_config(config(idempotent=value))
    assert policy.flags == 0 and policy.idempotent


def test_hedge_after_ms_is_a_fixed_delay_in_seconds() -> None:
    policy = policy_from_config(config(hedge_after_ms="50"))
    assert policy.hedge_after_s == pytest.approx(0.05)
    assert not policy.hedge_p95
    assert policy_from_config(config(hedge_after_ms="2.5")).hedge_after_s == pytest.approx(0.0025)


@pytest.mark.parametrize("value", ["0", "0.1", "-5"])
def test_tiny_or_negative_hedge_delays_are_raised_to_the_minimum(value: str) -> None:
    assert policy_from_config(config(hedge_after_ms=value)).hedge_after_s == MIN_HEDGE_DELAY_S


@pytest.mark.parametrize("value", ["p95", "P95", " p95 "])
def test_hedge_after_p95(value: str) -> None:
    policy = policy_from_config(config(hedge_after_ms=value))
    assert policy.hedge_p95 and policy.hedge_after_s is None


@pytest.mark.parametrize("value", ["soon", "p99", "50ms", ""])
def test_unreadable_hedge_delay_means_no_hedging(value: str) -> None:
    policy = policy_from_config(config(hedge_after_ms=value))
    assert policy.hedge_after_s is None and not policy.hedge_p95


@pytest.mark.parametrize("hedge", ["50", "p95"])
def test_non_idempotent_models_never_hedge(hedge: str) -> None:
    policy = policy_from_config(config(idempotent="false", hedge_after_ms=hedge))
    assert not policy.idempotent
    assert policy.hedge_after_s is None and not policy.hedge_p95


def test_default_queue_timeout_becomes_the_default_deadline() -> None:
    assert policy_from_config(config(timeout_us=250_000)).default_timeout_s == pytest.approx(0.25)
    assert policy_from_config(config(timeout_us=0)).default_timeout_s is None


def test_parameters_other_than_the_known_ones_are_ignored() -> None:
    assert policy_from_config(config(pad_to_longest="true")) == DEFAULT_POLICY


# ---- LatencyTracker -----------------------------------------------------------------------------


def test_no_p95_before_enough_samples() -> None:
    tracker = LatencyTracker()
    for _ in range(P95_MIN_SAMPLES - 1):
        tracker.observe(0.01)
    assert tracker.p95() is None
    tracker.observe(0.01)
    assert tracker.p95() == pytest.approx(0.01)


def test_p95_is_the_95th_percentile_of_the_window() -> None:
    tracker = LatencyTracker()
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    for s in reversed(samples):
        tracker.observe(s)
    # Recomputed after the 50th sample and again 32 samples later (the 82nd).
    assert tracker.p95() == pytest.approx(sorted(samples[-82:])[int(0.95 * 81)])


def test_p95_is_recomputed_every_32_samples_only() -> None:
    tracker = LatencyTracker()
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(0.01)
    assert tracker.p95() == pytest.approx(0.01)
    for _ in range(31):
        tracker.observe(1.0)
    assert tracker.p95() == pytest.approx(0.01)  # still the old value: cheap per observation
    tracker.observe(1.0)
    assert tracker.p95() == pytest.approx(1.0)  # 32 of 82 samples are 1 s: above the 95th


def test_window_keeps_only_recent_samples() -> None:
    tracker = LatencyTracker(window=P95_MIN_SAMPLES)
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(5.0)
    for _ in range(P95_MIN_SAMPLES + 14):  # a multiple of 32 after the first recompute
        tracker.observe(0.02)
    assert tracker.p95() == pytest.approx(0.02)  # the slow samples left the window


def test_hedge_delay_prefers_the_fixed_delay() -> None:
    tracker = LatencyTracker()
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(0.3)
    both = ModelPolicy(hedge_after_s=0.05, hedge_p95=True)
    assert tracker.hedge_delay_s(both) == pytest.approx(0.05)


def test_hedge_delay_from_p95() -> None:
    tracker = LatencyTracker()
    policy = ModelPolicy(hedge_p95=True)
    assert tracker.hedge_delay_s(policy) is None  # no p95 yet: no hedge
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(0.3)
    assert tracker.hedge_delay_s(policy) == pytest.approx(0.3)


def test_hedge_delay_from_p95_has_a_floor() -> None:
    tracker = LatencyTracker()
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(0.00001)
    assert tracker.hedge_delay_s(ModelPolicy(hedge_p95=True)) == MIN_HEDGE_DELAY_S


def test_no_hedge_delay_without_hedging() -> None:
    tracker = LatencyTracker()
    for _ in range(P95_MIN_SAMPLES):
        tracker.observe(0.3)
    assert tracker.hedge_delay_s(DEFAULT_POLICY) is None
