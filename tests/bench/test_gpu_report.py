"""The ``make bench-gpu`` page: a dry run says so before any figure, and served throughput is
set against the in-process executor at the same batch size."""

from __future__ import annotations

from typing import Any

from bench.gpu_report import to_markdown


def report(dry_run: bool, gpu_host: bool) -> dict[str, Any]:
    return {
        "timestamp": "20261201T000000Z",
        "gpu_host": gpu_host,
        "dry_run": dry_run,
        "seconds": 100.0,
        "stages": {"tests": 10.0},
        "torch_before": {"torch": "2.13.0+cu128", "cuda": "12.8", "available": True},
        "tests": {"rc": 0, "required": True, "summary": "14 passed in 9s"},
        "inprocess": {
            "device": "cuda:0",
            "info": {"gpu_name": "NVIDIA H200", "gpus": 1},
            "copies": [{"bytes": 1 << 20, "pageable_gb_s": 5.0, "pinned_gb_s": 20.0}],
            "paths": {
                "mlp": [
                    {"batch": 1, "device_rows_s": 9000.0, "naive_rows_s": 3000.0,
                     "executor_rows_s": 4000.0},
                    {"batch": 8, "device_rows_s": 70000.0, "naive_rows_s": 20000.0,
                     "executor_rows_s": 30000.0},
                ]
            },
            "overlap": {"model": "wide_mlp", "batch": 32, "one_rows_s": 100.0,
                        "two_rows_s": 190.0, "two_over_one": 1.9},
        },
        "served": {
            "device": "cuda:0",
            "points": {
                "mlp": [
                    {"concurrency": 1, "rows_s": 1000.0, "p50_ms": 0.9, "p99_ms": 2.0,
                     "errors": 0},
                    {"concurrency": 64, "rows_s": 9000.0, "p50_ms": 7.0, "p99_ms": 9.0,
                     "errors": 0},
                ]
            },
        },
    }  # fmt: skip


def test_a_gpu_run_shows_copies_paths_served_ratios_and_overlap() -> None:
    md = to_markdown(report(dry_run=False, gpu_host=True))
    assert "DRY RUN" not in md
    assert "Device: NVIDIA H200 (1 GPU(s)); torch 2.13.0+cu128 (CUDA 12.8)" in md
    assert "GPU tests (skips fail): exit 0, `14 passed in 9s`." in md
    assert "| 1 MiB | 5.00 | 20.00 | 4.00x |" in md
    assert "| 8 | 70,000 | 20,000 | 30,000 |" in md
    assert "| 1 | 1,000 | 0.90 | 2.00 | 0 | 0.25 |" in md  # 1,000 / 4,000 at batch 1
    assert "| 64 | 9,000 | 7.00 | 9.00 | 0 | n/a |" in md  # no in-process batch of 64 here
    assert "two instances on their own streams 190 rows/s (1.90x)" in md


def test_a_dry_run_says_so_before_any_figure() -> None:
    md = to_markdown(report(dry_run=True, gpu_host=False))
    banner = md.index("**DRY RUN: no usable GPU on this host.")
    assert banner < md.index("| size |")
    on_gpu_host = to_markdown(report(dry_run=True, gpu_host=True))
    assert "this host has an NVIDIA GPU but torch cannot use CUDA" in on_gpu_host
