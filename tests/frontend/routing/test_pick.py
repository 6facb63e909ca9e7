"""Choosing a target: weighted draws and weighted rendezvous hashing, with seeded draws."""

from __future__ import annotations

import random

import pytest

from frontend.routing.pick import Picker, effective_weights, target_salt

SALTS = [target_salt("clf", "1"), target_salt("clf", "2")]
CALLS = 10_000


def _shares(picks: list[int], n: int) -> list[float]:
    return [100.0 * picks.count(i) / len(picks) for i in range(n)]


@pytest.mark.parametrize("weights", [[90, 10], [50, 50], [99, 1], [60, 30, 10]])
def test_weighted_split_within_two_points_over_ten_thousand_calls(weights: list[int]) -> None:
    salts = [target_salt("m", str(i)) for i in range(len(weights))]
    picker = Picker([float(w) for w in weights], salts)
    draw = random.Random(12).random
    shares = _shares([picker.pick(draw()) for _ in range(CALLS)], len(weights))
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share - weight) <= 2.0, (shares, weights)


def test_a_zero_weight_is_never_picked_even_at_the_edges() -> None:
    picker = Picker([100.0, 0.0], SALTS)
    assert {picker.pick(u) for u in (0.0, 0.5, 1.0 - 1e-16, 1.0)} == {0}
    assert {picker.pick_key(str(k).encode()) for k in range(500)} == {0}
    picker = Picker([0.0, 100.0], SALTS)
    assert {picker.pick(u) for u in (0.0, 0.5, 1.0)} == {1}


@pytest.mark.parametrize("weights", [[90, 10], [50, 50], [75, 25]])
def test_sticky_keys_split_by_weight(weights: list[int]) -> None:
    picker = Picker([float(w) for w in weights], SALTS)
    picks = [picker.pick_key(f"user-{k}".encode()) for k in range(CALLS)]
    for share, weight in zip(_shares(picks, 2), weights, strict=True):
        assert abs(share - weight) <= 2.0


def test_a_key_maps_to_the_same_target_in_every_picker_and_process() -> None:
    keys = [f"user-{k}".encode() for k in range(2000)]
    a = [Picker([90.0, 10.0], SALTS).pick_key(k) for k in keys]
    b = [Picker([90.0, 10.0], SALTS).pick_key(k) for k in keys]
    assert a == b
    # Fixed values: the hash is blake2b, not Python's per-process hash(), so another replica
    # or a restarted frontend sends these keys to the same targets.
    assert a[:12] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0]


def test_when_the_canary_grows_only_keys_that_must_move_do() -> None:
    keys = [f"user-{k}".encode() for k in range(CALLS)]
    before = Picker(effective_weights([90, 10], 10), SALTS)
    after = Picker(effective_weights([90, 10], 25), SALTS)
    moved = 0
    for key in keys:
        a, b = before.pick_key(key), after.pick_key(key)
        if a != b:
            assert (a, b) == (0, 1), "a key may only move onto the canary"
            moved += 1
    assert abs(100.0 * moved / CALLS - 15.0) <= 2.0  # 25 % - 10 %: the minimum that must move


def test_reordering_targets_keeps_every_key_on_its_target() -> None:
    keys = [f"k{k}".encode() for k in range(2000)]
    fwd = Picker([70.0, 30.0], SALTS)
    rev = Picker([30.0, 70.0], list(reversed(SALTS)))
    assert all(fwd.pick_key(k) == 1 - rev.pick_key(k) for k in keys)


def test_effective_weights() -> None:
    assert effective_weights([90, 10], None) == [90.0, 10.0]
    assert effective_weights([90, 10], 25) == [75.0, 25.0]
    assert effective_weights([60, 20, 20], 50) == [37.5, 12.5, 50.0]
    assert effective_weights([90, 10], 0) == [90.0 / 90 * 100, 0.0]  # rolled back
    assert effective_weights([90, 10], 100) == [0.0, 100.0]


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError):
        Picker([0.0, 0.0], SALTS)
    with pytest.raises(ValueError):
        Picker([-1.0, 2.0], SALTS)
    with pytest.raises(ValueError):
        Picker([1.0], SALTS)
