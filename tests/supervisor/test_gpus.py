"""``make run`` on a GPU host: one worker per visible GPU by default, each on its own GPU."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from supervisor import cli
from supervisor.gpus import probe_gpus, visible_gpus, worker_plan
from supervisor.plan import Options, Tier, build_plan

LISTING = "".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})\n" for i in range(8))


def test_visible_gpus_follow_nvidia_smi_and_cuda_visible_devices() -> None:
    assert visible_gpus(LISTING, None) == 8
    assert visible_gpus(LISTING, "2,5") == 2
    assert visible_gpus(LISTING, "GPU-3,GPU-4,GPU-5") == 3
    assert visible_gpus(LISTING, "") == 0
    assert visible_gpus(LISTING, "0,-1,3") == 1  # CUDA stops at the first invalid entry
    assert visible_gpus("No devices were found\n", None) == 0
    assert visible_gpus(LISTING.splitlines()[0], "0,1,2") == 1  # never more than the host has


def test_auto_starts_one_worker_per_gpu_each_on_its_own() -> None:
    assert worker_plan("auto", 8) == (8, tuple(f"cuda:{i}" for i in range(8)))
    assert worker_plan("auto", 0) == (1, ())


def test_an_explicit_worker_count_goes_round_the_gpus() -> None:
    assert worker_plan("3", 2) == (3, ("cuda:0", "cuda:1", "cuda:0"))
    assert worker_plan("2", 0) == (2, ())
    with pytest.raises(ValueError, match="workers must be a number or 'auto', got 'many'"):
        worker_plan("many", 1)


def test_the_plan_gives_each_worker_its_device_before_extra_flags() -> None:
    options = Options(workers=2, worker_devices=("cuda:0", "cuda:1"),
                      extra_worker_args=("--device=cpu",))  # fmt: skip
    workers = [s for s in build_plan(options) if s.tier is Tier.WORKER]
    for i, spec in enumerate(workers):
        at = spec.args.index("--device")
        assert spec.args[at + 1] == f"cuda:{i}"
        # A user's --worker-arg=--device=... comes later and wins (argparse: last one).
        assert spec.args.index("--device=cpu") > at
    plain = [s for s in build_plan(Options(workers=2)) if s.tier is Tier.WORKER]
    assert all("--device" not in s.args for s in plain)


def test_probe_gpus_without_nvidia_smi_is_zero() -> None:
    def never(argv: Sequence[str]) -> str:
        raise AssertionError("ran nvidia-smi")

    assert probe_gpus({}, lambda _: None, never) == 0
    assert probe_gpus({"CUDA_VISIBLE_DEVICES": "1"}, lambda _: "/bin/nvidia-smi",
                      lambda _: LISTING) == 1  # fmt: skip

    def hangs(argv: Sequence[str]) -> str:
        raise subprocess.TimeoutExpired(list(argv), 10)

    assert probe_gpus({}, lambda _: "/bin/nvidia-smi", hangs) == 0


def test_run_local_defaults_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "probe_gpus", lambda env: 2)
    options, _ = cli.parse_args([])
    assert (options.workers, options.worker_devices) == (2, ("cuda:0", "cuda:1"))
    monkeypatch.setattr(cli, "probe_gpus", lambda env: 0)
    options, _ = cli.parse_args([])
    assert (options.workers, options.worker_devices) == (1, ())
