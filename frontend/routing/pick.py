"""Choosing a route's target: a weighted draw for ordinary calls, weighted rendezvous hashing
for calls that carry a sticky key. No I/O, no clock, no hidden randomness: the caller passes
the uniform draw, so every choice is reproducible in tests.

Rendezvous hashing (highest random weight, weighted as in Schindelhauer & Schomaker): each
target scores ``weight / -ln(h)`` where ``h`` in (0, 1) is a hash of (target, key), and the
highest score wins. The hash is blake2b, the same in every process and on every machine, so
every frontend replica, before and after a restart, sends a key to the same target while the
weights stay the same. When one target's weight grows (or the others' shrink by a common
factor), a key's winner can only change to that target: only the keys that must move do.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from itertools import accumulate

_TWO_64 = float(1 << 64)


def effective_weights(file_weights: Sequence[int], canary_weight: int | None) -> list[float]:
    """The weights in force: the file's, or, once a rollout or rollback sets the canary's
    (the last target's) weight, that weight and the rest shared by the other targets in
    proportion to their file weights. Scaling the others by a common factor keeps the
    rendezvous order among them, so a rollout step moves keys only onto the canary."""
    if canary_weight is None:
        return [float(w) for w in file_weights]
    stable = file_weights[:-1]
    total = sum(stable)
    rest = float(sum(file_weights) - canary_weight)
    if total == 0:  # the config check forbids it for routes with a rollout or rollback
        return [0.0] * len(stable) + [float(canary_weight)]
    return [w * rest / total for w in stable] + [float(canary_weight)]


def target_salt(model: str, version: str) -> bytes:
    """What a target contributes to each key's hash: its identity, not its position in the
    list, so reordering or adding targets does not reshuffle the keys of the others."""
    return f"{model}\x00{version}\x00".encode()


class Picker:
    """One weight set, prepared for many picks. Weights are non-negative, not all zero."""

    __slots__ = ("_bounds", "_last", "_weights")

    def __init__(self, weights: Sequence[float], salts: Sequence[bytes]) -> None:
        if len(weights) != len(salts) or not weights:
            raise ValueError("one salt per weight, at least one weight")
        total = sum(weights)
        if total <= 0 or min(weights) < 0:
            raise ValueError(f"weights {list(weights)} must be non-negative, not all zero")
        self._weights = [(w, s) for w, s in zip(weights, salts, strict=True)]
        self._bounds = [c / total for c in accumulate(weights)]
        # The last target with weight: a draw at the upper edge (rounding) lands there.
        self._last = max(i for i, w in enumerate(weights) if w > 0)

    def pick(self, u: float) -> int:
        """The target for a uniform draw ``u`` in [0, 1)."""
        i = bisect.bisect_right(self._bounds, u)
        return i if i <= self._last else self._last

    def pick_key(self, key: bytes) -> int:
        """The target of a sticky key: the highest weighted rendezvous score."""
        best, best_score = -1, -1.0
        for i, (w, salt) in enumerate(self._weights):
            if w <= 0:
                continue
            digest = hashlib.blake2b(salt + key, digest_size=8).digest()
            h = (int.from_bytes(digest, "big") + 0.5) / _TWO_64  # in (0, 1), never 0 or 1
            score = w / -math.log(h)
            if score > best_score:
                best, best_score = i, score
        return best
