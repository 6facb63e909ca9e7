"""The server's compute time against the model called in-process on the same batches.

``run_inprocess`` times the bare model (``python -m bench.inprocess``, a subprocess with one
torch thread, so this process never imports torch) at the batch sizes the server executed; the
rest is pure arithmetic over typed results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from bench.results import ComputeDelta, ComputeVsInprocess, Measurement, Report, RoundRecord

POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)
MAX_INPROCESS_SIZES = 16
COVERED_SHARE = 0.95
"""Executed sizes are added, most compute time first, until they cover this share."""


def run_inprocess(
    repo: Path | None, model: str, sizes: list[int], seconds: float
) -> dict[str, Any]:
    """``bench.inprocess``'s JSON for ``model`` at ``sizes`` rows ({"error": ...} on failure)."""
    if repo is not None:
        src = ["--model-repository", str(repo), "--model", model]
    elif model == "mlp":
        src = ["--reference"]
    else:
        return {"error": "no model repository"}
    argv = [sys.executable, "-m", "bench.inprocess", *src, "--json", "--seconds", str(seconds)]
    r = subprocess.run(
        [*argv, "--batch-sizes", ",".join(map(str, sizes))],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def inprocess_sizes(records: list[RoundRecord], model: str) -> list[int]:
    """Powers of two plus the executed batch sizes that carried most of the compute time."""
    ns: dict[int, int] = {}
    for r in records:
        if isinstance(r, Measurement) and r.model == model and r.compute:
            for s, v in r.compute.sizes.items():
                ns[s] = ns.get(s, 0) + v.ns
    chosen = set(POWERS_OF_TWO)
    total = sum(ns.values())
    covered = 0
    for s, t in sorted(ns.items(), key=lambda kv: -kv[1]):
        if (
            covered >= COVERED_SHARE * total
            or len(chosen) >= len(POWERS_OF_TWO) + MAX_INPROCESS_SIZES
        ):
            break
        chosen.add(s)
        covered += t
    return sorted(chosen)


def inprocess_call_us(ip: dict[str, Any], size: int) -> tuple[float | None, bool]:
    """In-process µs per call at ``size`` rows (interpolated linearly between measured sizes)."""
    rows: dict[int, float] = {r["batch_size"]: r["us_per_call"] for r in ip.get("batches", [])}
    if not rows:
        return None, False
    if size in rows:
        return rows[size], False
    lo = max((s for s in rows if s < size), default=None)
    hi = min((s for s in rows if s > size), default=None)
    if lo is None or hi is None:
        near = lo if lo is not None else hi
        if near is None:
            return None, False
        return rows[near] * size / near, True
    f = (size - lo) / (hi - lo)
    return rows[lo] + f * (rows[hi] - rows[lo]), True


def compare_compute(
    compute: ComputeDelta | None, ip: dict[str, Any] | None
) -> ComputeVsInprocess | None:
    """The server's compute time against the in-process model on the same batches."""
    if not compute or not ip or "batches" not in ip or not compute.rows:
        return None
    ref_ns = 0.0
    interp_ns = 0.0
    for s, v in compute.sizes.items():
        us, interpolated = inprocess_call_us(ip, s)
        if us is None:
            return None
        ref_ns += v.n * us * 1e3
        if interpolated:
            interp_ns += v.n * us * 1e3
    if not ref_ns:
        return None
    return ComputeVsInprocess(
        server_us_per_row=compute.ns / compute.rows / 1e3,
        inprocess_us_per_row=ref_ns / compute.rows / 1e3,
        ratio=compute.ns / ref_ns,
        interpolated_share=interp_ns / ref_ns,
    )


def attach_inprocess(report: Report) -> None:
    """Fill ``compute_vs_inprocess`` of every measurement that has server statistics."""
    for rnd in report.rounds:
        for i, r in enumerate(rnd.results):
            if not isinstance(r, Measurement):
                continue
            cmp = compare_compute(r.compute, report.inprocess.get(r.model))
            if cmp:
                rnd.results[i] = msgspec.structs.replace(r, compute_vs_inprocess=cmp)
